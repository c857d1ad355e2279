#!/usr/bin/env bash
# Runs the whole test suite: contract lint, unit tests and the integration
# tests (which start real nats-server processes on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
echo "[test] buf lint (proto/)"
buf lint
echo "[test] cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast "$@"
