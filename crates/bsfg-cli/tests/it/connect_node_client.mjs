// A third-party client of the boundary contract: @connectrpc/connect-node
// with a schema read at run time from `buf build`'s descriptor set (no code
// generated from BSFG's build). Run by interop.rs with the working directory
// at .tools/npm (where the packages are) and the script on stdin.
//
// argv: descriptor set, base URL, CA, client certificate, client key, then
// a file of the calls, one JSON array of {method, request as proto JSON}. Prints one JSON line per
// call: {ok: <response as proto JSON>} or {error: {code, message}}.
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary, fromJson, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

const [descriptors, baseUrl, ca, cert, key, calls] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const service = registry.getService("bsfg.v1.BoundaryService");
const transport = createConnectTransport({
  baseUrl,
  httpVersion: "2",
  nodeOptions: { ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key) },
});
const client = createClient(service, transport);
for (const { method, request } of JSON.parse(readFileSync(calls, "utf8"))) {
  const desc = service.methods.find((m) => m.name === method);
  try {
    const response = await client[desc.localName](fromJson(desc.input, request));
    console.log(JSON.stringify({ ok: toJson(desc.output, response) }));
  } catch (e) {
    const err = ConnectError.from(e);
    console.log(JSON.stringify({ error: { code: Code[err.code], message: err.rawMessage } }));
  }
}
