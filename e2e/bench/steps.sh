#!/usr/bin/env bash
# The steps benchmark: JSON orders (1,000 customers, event time one per millisecond, up to 3 s
# out of order, one in five not paid) in a topic of the real broker; one worker runs
# filter (CEL) → map (CEL) → one-minute tumbling-window aggregate on event time (count, sum, max
# per customer, RocksDB state, 30 s allowed lateness), writes the window results, and checkpoints
# every 10 s to the S3 server. In the same run, on the same topic, a bare rdkafka consumer loop
# measures what the broker can deliver (before and after the worker; the faster of the two
# counts). The same job over the same orders fed from memory (no broker) gives the engine's
# ceiling. The last line:
#   steps events=N seconds=S events_per_s=X raw_events_per_s=Y ratio=X/Y
# Settings: BENCH_EVENTS, BENCH_PARTITIONS, BENCH_INTERVAL.
source "$(dirname "$0")/env.sh"
EVENTS="${BENCH_EVENTS:-2000000}"
PARTITIONS="${BENCH_PARTITIONS:-4}"
INTERVAL="${BENCH_INTERVAL:-10s}"
TOPIC=bench.orders

bench_build
bench_servers
rm -rf "$SCRATCH/steps" && mkdir -p "$SCRATCH/steps"

"$BIN/sluice-bench" orders --topic "$TOPIC" --events "$EVENTS" --partitions "$PARTITIONS"
value() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# Figures go to stdout, progress to stderr; show both as they come.
measure() { # name command...: runs it, shows its figures, returns its last line
  local out="$SCRATCH/steps/$1.out"
  shift
  "$@" > "$out" && cat "$out" >&2 && tail -n 1 "$out"
}
raw1=$(measure raw1 "$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS")
worker=$(measure worker "$BIN/sluice-bench" steps --topic "$TOPIC" --events "$EVENTS" \
  --worker "$BIN/sluice-worker" --dir "$SCRATCH/steps" --interval "$INTERVAL")
raw2=$(measure raw2 "$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS")
# The same job and orders fed from memory through the same task loop: the engine's ceiling.
engine=$(measure engine "$BIN/sluice-bench" engine --steps --events "$EVENTS" \
  --partitions "$PARTITIONS" --interval "$INTERVAL" --dir "$SCRATCH/steps/engine")

x=$(value events_per_s "$worker")
s=$(value seconds "$worker")
y=$(printf '%s\n%s\n' "$(value events_per_s "$raw1")" "$(value events_per_s "$raw2")" | sort -n | tail -n 1)
details=$(head -n 1 "$SCRATCH/steps/worker.out")
echo "steps engine_events_per_s=$(value events_per_s "$engine") engine_seconds=$(value seconds "$engine")"
echo "steps partitions=$PARTITIONS interval=$INTERVAL raw_runs_events_per_s=$(value events_per_s "$raw1"),$(value events_per_s "$raw2") checkpoints=$(value checkpoints "$details") pause_p50_ms=$(value pause_p50_ms "$details") pause_p99_ms=$(value pause_p99_ms "$details") records_out=$(value records_out "$details") peak_rss=$(sed -n 's/.*peak_rss=\([0-9.]* MiB\).*/\1/p' <<<"$details")"
echo "steps events=$EVENTS seconds=$s events_per_s=$x raw_events_per_s=$y ratio=$(awk -v x="$x" -v y="$y" 'BEGIN {printf "%.3f", x / y}')"
