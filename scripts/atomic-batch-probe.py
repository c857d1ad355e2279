#!/usr/bin/env python3
"""What a nats-server binary does with JetStream atomic batches (ADR-50),
case by case, over the raw NATS protocol (no client library in the way):
replies to staged messages, the commit's acknowledgement, Nats-Msg-Id
duplicates in a batch and in the duplicate window, expected-last headers,
the size limit, a full stream, a gap, the stored headers, allow_atomic off.
docs/atomic-batches.md records what 2.15.1 answered.

Usage: scripts/atomic-batch-probe.py [nats-server binary]
(default .tools/bin/nats-server); starts the server on a free port in a
temporary directory at sync_interval: always and kills it at the end.
"""
import json, os, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".tools", "bin", "nats-server")

class Nats:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""
        self.read_line()  # INFO
        self.s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nPING\r\n')
        self.sid = 0
        self.inbox_sid = self.sub("_INBOX.probe.>")
        self.expect_pong()
        self.n = 0

    def read_line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_n(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.s.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def expect_pong(self):
        while True:
            line = self.read_line()
            if line == b"PONG":
                return
            if line.startswith(b"PING"):
                self.s.sendall(b"PONG\r\n")

    def sub(self, subject):
        self.sid += 1
        self.s.sendall(f"SUB {subject} {self.sid}\r\n".encode())
        return self.sid

    def pub(self, subject, payload=b"", headers=None, reply=None):
        r = f" {reply}" if reply else ""
        if headers is None:
            self.s.sendall(f"PUB {subject}{r} {len(payload)}\r\n".encode() + payload + b"\r\n")
            return
        h = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        hb = h.encode()
        self.s.sendall(f"HPUB {subject}{r} {len(hb)} {len(hb) + len(payload)}\r\n".encode() + hb + payload + b"\r\n")

    def next_msg(self, timeout=3.0):
        self.s.settimeout(timeout)
        try:
            while True:
                line = self.read_line()
                if line.startswith(b"PING"):
                    self.s.sendall(b"PONG\r\n")
                    continue
                parts = line.split()
                if parts[0] == b"MSG":
                    data = self.read_n(int(parts[-1]))
                    return parts[1].decode(), {}, data
                if parts[0] == b"HMSG":
                    total = int(parts[-1]); hlen = int(parts[-2])
                    data = self.read_n(total)
                    hdrs = {}
                    for l in data[:hlen].decode().split("\r\n")[1:]:
                        if ": " in l:
                            k, v = l.split(": ", 1); hdrs[k] = v
                    return parts[1].decode(), hdrs, data[hlen:]
        except socket.timeout:
            return None
        finally:
            self.s.settimeout(None)

    def request(self, subject, payload=b"", headers=None):
        self.n += 1
        reply = f"_INBOX.probe.{self.n}"
        self.pub(subject, payload, headers, reply)
        m = self.next_msg()
        return None if m is None else (m[1], m[2])

def main():
    d = tempfile.mkdtemp()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = os.path.join(d, "n.conf")
    open(conf, "w").write(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{d}/js"\n sync_interval: always }}\n')
    p = subprocess.Popen([BIN, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        nc = Nats(port)
        print("version:", subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip())
        cfg = {"name": "P", "subjects": ["p.>"], "storage": "file", "duplicate_window": 120_000_000_000,
               "allow_atomic": True, "allow_direct": True, "discard": "new", "max_bytes": 200000}
        print("create:", nc.request("$JS.API.STREAM.CREATE.P", json.dumps(cfg).encode())[1][:120])

        def batch(bid, msgs, reply_all=False, extra=None):
            """msgs: list of (subject, msgid or None); returns replies (list)."""
            out = []
            for i, (subj, mid) in enumerate(msgs, 1):
                h = {"Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(i)}
                if mid:
                    h["Nats-Msg-Id"] = mid
                if extra and i in extra:
                    h.update(extra[i])
                if i == len(msgs):
                    h["Nats-Batch-Commit"] = "1"
                    out.append(nc.request(subj, b"x" * 100, h))
                elif reply_all:
                    out.append(nc.request(subj, b"x" * 100, h))
                else:
                    nc.pub(subj, b"x" * 100, h)
            return out

        r = batch("b1", [("p.a", f"m{i}") for i in range(5)], reply_all=True)
        print("1. replies to staged messages with a reply subject:", [x[1] for x in r[:-1]], "commit:", r[-1][1])
        r = batch("b2", [("p.a", f"n{i}") for i in range(5)])
        print("2. staged without reply; commit:", r[-1][1])
        r = batch("b3", [("p.a", "dup1"), ("p.a", "x1"), ("p.a", "dup1")])
        print("3. msg id twice in the batch:", r[-1][1])
        r = batch("b4", [("p.a", "y1"), ("p.a", "m0"), ("p.a", "y2")])
        print("4. msg id known to the duplicate window:", r[-1][1])
        r = batch("b5", [("p.a", "z1"), ("p.a", "z2")], extra={2: {"Nats-Expected-Last-Msg-Id": "z1"}})
        print("5. Nats-Expected-Last-Msg-Id inside:", r[-1][1])
        info = json.loads(nc.request("$JS.API.STREAM.INFO.P")[1])
        last = info["state"]["last_seq"]
        r = batch("b6", [("p.a", "e1"), ("p.a", "e2")], extra={1: {"Nats-Expected-Last-Sequence": str(last)}})
        print("6. Nats-Expected-Last-Sequence on the first message:", r[-1][1])
        r = batch("b7", [("p.a", "f1"), ("p.a", "f2")], extra={2: {"Nats-Expected-Last-Sequence": "1"}})
        print("7. Nats-Expected-Last-Sequence on a later message:", r[-1][1])
        r = batch("b8", [("p.b", None) for _ in range(1001)])
        print("8. 1001 messages:", r[-1][1])
        r = batch("b9", [("p.c", f"big{i}") for i in range(1000)])
        print("9. a batch past max_bytes (discard new):", r[-1][1])
        info = json.loads(nc.request("$JS.API.STREAM.INFO.P")[1])
        print("   stream state after:", info["state"]["messages"], "msgs,", info["state"]["bytes"], "bytes")
        # A gap: sequence 1, 3 (commit)
        nc.pub("p.a", b"x", {"Nats-Batch-Id": "g1", "Nats-Batch-Sequence": "1"})
        print("10. gap:", nc.request("p.a", b"x", {"Nats-Batch-Id": "g1", "Nats-Batch-Sequence": "3", "Nats-Batch-Commit": "1"})[1])
        m = nc.request("$JS.API.DIRECT.GET.P", json.dumps({"seq": 3}).encode())
        print("11. stored headers of a batch message:", {k: v for k, v in m[0].items() if k.startswith("Nats-B") or k == "Nats-Msg-Id"})
        m = nc.request("$JS.API.DIRECT.GET.P", json.dumps({"seq": 5}).encode())
        print("    and of the commit:", {k: v for k, v in m[0].items() if k.startswith("Nats-B")})
        cfg["allow_atomic"] = False
        print("12. update allow_atomic off:", json.loads(nc.request("$JS.API.STREAM.UPDATE.P", json.dumps(cfg).encode())[1])["config"].get("allow_atomic"))
        r = batch("b12", [("p.a", "h1"), ("p.a", "h2")])
        print("    batch then:", r[-1][1])
    finally:
        p.kill()

main()
