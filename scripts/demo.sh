#!/usr/bin/env bash
# The main job: starts a local zone (plant-a) whose node starts and supervises
# its own nats-server, and walks through append, duplicate retry, conflicting
# retry, fetch/confirm and an artifact upload referenced by a fact.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p bsfg
exec ./target/debug/bsfg demo "$@"
