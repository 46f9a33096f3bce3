#!/usr/bin/env bash
# Reproduces every number in BENCHMARKS.md: the criterion benches (core,
# start-up, group commit, per-user locks), the gRPC load generator, in
# memory and durable, and what exporting spans costs (tracing_cost.sh).
# Takes about fifteen minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench ledger --bench recovery --bench group_commit --bench users --bench snapshot_memory

cargo build --release --bin points-server --bin points-bench
echo "== gRPC, in memory"
target/release/points-bench --spawn --duration-secs 5

data_dir=target/bench-data
rm -rf "$data_dir"
echo "== gRPC, durable (--fsync always)"
target/release/points-bench --spawn --server-arg=--data-dir="$data_dir" --duration-secs 5 \
    --workloads check,add,spend,mixed,batch
rm -rf "$data_dir"

echo "== exporting spans: server CPU per call, exported against off"
benches/tracing_cost.sh 6
