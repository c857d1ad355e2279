#!/usr/bin/env bash
# Runs the BSFG end-to-end benchmarks and writes their results sections of
# BENCHMARKS.md. Extra arguments go to bsfg-bench, e.g.
#   scripts/bench.sh --duration 2 --reps 1 --drain-facts 50000   # single zone, quick
#   scripts/bench.sh crossing                                      # crossing zones, full
#   scripts/bench.sh crossing --facts 2000 --native-facts 100000 \
#       --backlog-facts 5000 --artifact-mib 64 --lag-secs 3        # crossing zones, quick
#   scripts/bench.sh substrate [--window 8]                        # nats-server alone, node layout
#   scripts/bench.sh crossing --only-lag [--lag-rate 1000]         # two-hop lag only, printed
#   scripts/bench.sh crossing --only-reference                     # native sourcing + bare bridge, printed
#   scripts/bench.sh key-index [--entries 4000000]                 # the key index alone, printed
#   scripts/bench.sh batches [--nats-sync always,2m]              # atomic batches vs pipelined, printed
#   scripts/bench.sh ab --a <other build>/target/release/bsfg \
#       --b target/release/bsfg [--nats-sync 2m] [--reps 5]         # two node binaries, AppendFact c64, printed
#   scripts/bench.sh ha [--reps 3] [--kills 10] [--backlog-facts 100000] # a zone on a 3-server cluster, printed
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p bsfg-cli -p bsfg-bench
if [ "${1:-}" = crossing ]; then
  shift
  exec target/release/bsfg-bench crossing --out BENCHMARKS.md "$@"
fi
if [ "${1:-}" = substrate ] || [ "${1:-}" = key-index ] || [ "${1:-}" = ab ] \
  || [ "${1:-}" = batches ] || [ "${1:-}" = ha ]; then
  # Prints its tables; they are copied into BENCHMARKS.md by hand.
  command=$1
  shift
  exec target/release/bsfg-bench "$command" "$@"
fi
exec target/release/bsfg-bench --out BENCHMARKS.md "$@"
