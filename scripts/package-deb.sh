#!/usr/bin/env bash
# Builds the Debian package of BSFG: the bsfg binary, the pinned nats-server
# it supervises, a systemd unit template (bsfg@<zone>), an example zone file
# and the README.
#
#   scripts/package-deb.sh [--bin PATH] [--out DIR] [--compress xz|none]
#
# --bin: the bsfg binary to package (default: target/release/bsfg, built
# with `cargo build --release -p bsfg-cli` if missing). --out: where the
# .deb goes (default: target/debian). --compress: none packs a test build
# quickly (default xz). Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/bsfg
OUT=target/debian
COMPRESS=xz
while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --compress) COMPRESS=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--out DIR] [--compress xz|none]" >&2; exit 2 ;;
  esac
done
if [[ ! -x $BIN && $BIN == target/release/bsfg ]]; then
  cargo build --release -p bsfg-cli >&2
fi
NATS=.tools/bin/nats-server
[[ -x $NATS ]] || { echo "$NATS missing: run scripts/setup.sh" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"
install -D -m 0755 "$BIN" "$STAGE/usr/bin/bsfg"
install -D -m 0755 "$NATS" "$STAGE/usr/lib/bsfg/nats-server"
install -D -m 0644 deploy/systemd/bsfg@.service "$STAGE/lib/systemd/system/bsfg@.service"
install -D -m 0644 deploy/debian/plant-a.toml "$STAGE/etc/bsfg/plant-a.toml.example"
install -D -m 0644 README.md "$STAGE/usr/share/doc/bsfg/README.md"
install -D -m 0644 deploy/prometheus/bsfg.rules.yml "$STAGE/usr/share/doc/bsfg/prometheus/bsfg.rules.yml"
install -D -m 0644 deploy/grafana/bsfg-zone.json "$STAGE/usr/share/doc/bsfg/grafana/bsfg-zone.json"
mkdir -p "$STAGE/DEBIAN"
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: bsfg
Version: $VERSION
Architecture: amd64
Maintainer: BSFG developers <bsfg@localhost>
Depends: libc6, adduser
Section: net
Priority: optional
Description: Bidirectional Store-and-Forward Gateway between network zones
 A zone node: producers append facts and artifacts to their zone; facts
 cross to another zone only when it pulls them, durably and exactly once.
 Runs one node per zone as bsfg@<zone> with its own nats-server.
CONTROL
cat > "$STAGE/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd bsfg >/dev/null; then
    adduser --system --group --home /var/lib/bsfg --no-create-home bsfg
  fi
  install -d -m 0750 -o root -g bsfg /etc/bsfg
fi
POSTINST
chmod 0755 "$STAGE/DEBIAN/postinst"
mkdir -p "$OUT"
DEB="$OUT/bsfg_${VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Z"$COMPRESS" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
