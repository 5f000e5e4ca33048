#!/usr/bin/env bash
# Rescale downtime: 12 partitions, 1,000,000 rows of about 1 KiB each (about 1 GiB of state
# in RocksDB), built by 3 workers; then, while new rows trickle in, the job is rescaled to 6
# workers the way the operator rolls a StatefulSet (old workers stop after a final
# checkpoint, new ordinals start at once, tasks that move restore from S3). Prints the time
# from the rescale's start until every task processes records again; the last line:
#   rescale from=3 to=6 state=… downtime_s=X
# Settings: BENCH_KEYS, BENCH_PAD, BENCH_FROM, BENCH_TO.
source "$(dirname "$0")/env.sh"
bench_build
bench_servers
"$BIN/sluice-bench" rescale --worker "$BIN/sluice-worker" --generator "$BIN/sluice-cdc-gen" \
  --dir "$SCRATCH/rescale" --keys "${BENCH_KEYS:-1000000}" --pad "${BENCH_PAD:-1000}" \
  --from "${BENCH_FROM:-3}" --to "${BENCH_TO:-6}"
