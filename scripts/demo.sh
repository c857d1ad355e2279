#!/usr/bin/env bash
# The main job: starts the whole reference site on this machine — four zones
# (enterprise, idmz, plant-a, plant-b), each node starting and supervising its
# own nats-server (JetStream domain = zone name), mutual TLS with a dev PKI —
# moves facts and an artifact both ways over two hops, cuts the
# idmz <-> enterprise link while the plants keep appending, restores it,
# watches the backlog drain and checks every fact arrived exactly once.
# `scripts/demo.sh --single-zone` walks one zone through the contract instead;
# `scripts/demo.sh --ha` runs one zone on three clustered nats-servers with
# two nodes, kills the writer and a nats-server, and checks nothing was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p bsfg-cli
exec ./target/debug/bsfg demo "$@"
