#!/usr/bin/env bash
# The engine's own ceiling: the CDC benchmark's 5,440,000 events fed from memory through the
# real task loop (decode → materialize in RocksDB → encode into output batches), checkpoints
# on (file://, every 2 s), no broker. The input is generated once and run BENCH_RUNS times
# (3), each from empty state; a line per run, and the median run last:
#   engine events=N seconds=S events_per_s=X cores=C
# Settings: BENCH_KEYS, BENCH_EVENTS, BENCH_PARTITIONS, BENCH_INTERVAL, BENCH_RUNS.
source "$(dirname "$0")/env.sh"
bench_build
"$BIN/sluice-bench" engine --keys "${BENCH_KEYS:-906667}" --events "${BENCH_EVENTS:-5440000}" \
  --partitions "${BENCH_PARTITIONS:-4}" --interval "${BENCH_INTERVAL:-2s}" \
  --runs "${BENCH_RUNS:-3}" --dir "$SCRATCH/engine"
