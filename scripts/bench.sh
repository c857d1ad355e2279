#!/usr/bin/env bash
# Runs the BSFG end-to-end benchmark and writes the results section of
# BENCHMARKS.md. Extra arguments go to bsfg-bench, e.g.
#   scripts/bench.sh --duration 2 --reps 1 --drain-facts 50000   # quick run
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p bsfg -p bsfg-bench
exec target/release/bsfg-bench --out BENCHMARKS.md "$@"
