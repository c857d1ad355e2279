#!/usr/bin/env bash
# Runs the whole test suite: contract lint, clippy, unit tests and the integration
# tests (which start real nats-server processes on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
echo "[test] buf lint (proto/)"
buf lint
if cargo fmt --version >/dev/null 2>&1; then
  echo "[test] cargo fmt --all --check"
  cargo fmt --all --check
else
  echo "[test] rustfmt is not installed with this toolchain: formatting not checked"
fi
if cargo clippy --version >/dev/null 2>&1; then
  echo "[test] cargo clippy --workspace --all-targets -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
else
  echo "[test] cargo clippy is not installed with this toolchain: lints skipped"
fi
echo "[test] cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast "$@"
