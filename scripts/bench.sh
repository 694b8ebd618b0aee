#!/bin/sh
# Runs the benchmark: `scripts/bench.sh` (the one-sidecar table),
# `scripts/bench.sh fleet` (N sidecars through a hub restart, per jitter
# strategy), `scripts/bench.sh rate` (within 4718a58's real rate budget) or
# `scripts/bench.sh all`. Same as `cargo bench --bench relay -- <mode>`; the
# knobs are environment variables (docs/benchmarks.md), e.g.
# BENCH_IDLE_SECS=10 scripts/bench.sh
set -eu
cd "$(dirname "$0")/.."
mode="${1:-table}"
case "$mode" in
    table|fleet|rate|all) ;;
    *) echo "usage: $0 [table|fleet|rate|all]" >&2; exit 2 ;;
esac
exec cargo bench --locked --bench relay -- "$mode"
