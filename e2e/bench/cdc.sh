#!/usr/bin/env bash
# The CDC benchmark: 5,440,000 Debezium change events (906,667 keys: create, 4 updates, delete)
# in a topic of the real broker; one worker materializes them with RocksDB state, writes the
# changelog, and checkpoints every 10 s to the S3 server. In the same run, on the same topic,
# a bare rdkafka consumer loop measures what the broker can deliver (before and after the
# worker; the faster of the two counts). The last line:
#   cdc events=N seconds=S events_per_s=X raw_events_per_s=Y ratio=X/Y
# Settings: BENCH_KEYS, BENCH_EVENTS, BENCH_PARTITIONS, BENCH_INTERVAL.
source "$(dirname "$0")/env.sh"
KEYS="${BENCH_KEYS:-906667}"
EVENTS="${BENCH_EVENTS:-5440000}"
PARTITIONS="${BENCH_PARTITIONS:-12}"
INTERVAL="${BENCH_INTERVAL:-10s}"
TOPIC=bench.cdc

bench_build
bench_servers
rm -rf "$SCRATCH/cdc" && mkdir -p "$SCRATCH/cdc"

"$BIN/sluice-cdc-gen" --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --topic "$TOPIC" \
  --partitions "$PARTITIONS" --keys "$KEYS" --events "$EVENTS"
value() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

raw1=$("$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS" | tee /dev/stderr | tail -n 1)
worker=$("$BIN/sluice-bench" cdc --topic "$TOPIC" --events "$EVENTS" --worker "$BIN/sluice-worker" \
  --dir "$SCRATCH/cdc" --interval "$INTERVAL" | tee /dev/stderr)
raw2=$("$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS" | tee /dev/stderr | tail -n 1)

last=$(tail -n 1 <<<"$worker")
x=$(value events_per_s "$last")
s=$(value seconds "$last")
y=$(printf '%s\n%s\n' "$(value events_per_s "$raw1")" "$(value events_per_s "$raw2")" | sort -n | tail -n 1)
echo "cdc partitions=$PARTITIONS keys=$KEYS interval=$INTERVAL raw_runs_events_per_s=$(value events_per_s "$raw1"),$(value events_per_s "$raw2")"
echo "cdc events=$EVENTS seconds=$s events_per_s=$x raw_events_per_s=$y ratio=$(awk -v x="$x" -v y="$y" 'BEGIN {printf "%.3f", x / y}')"
