#!/usr/bin/env bash
# The fault suite as a soak: the four-zone site under load both ways for N
# minutes (default 30) with every fault class (partitions, kill -9 of nodes
# and nats-servers, freezes of nodes and nats-servers), then the checker.
# Prints the seed (replay with BSFG_FAULT_SEED=<seed>), the faults by kind
# and, per destination, facts acknowledged, lost, duplicated, reordered and
# altered.
#   scripts/soak.sh [minutes]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
export PATH="$PWD/.tools/bin:$PATH"
export BSFG_SOAK_MINUTES="${1:-30}"
exec cargo nextest run -p bsfg-cli --test it --no-capture --no-fail-fast \
  faults::continuous_load_survives_partitions_kills_and_freezes_exactly_once_in_order
