#!/usr/bin/env bash
# The CDC benchmark: 5,440,000 Debezium change events (906,667 keys: create, 4 updates, delete)
# in a topic of the real broker; one worker materializes them with RocksDB state, writes the
# changelog, and checkpoints every 10 s to the S3 server. In the same run, on the same topic,
# a bare rdkafka consumer loop measures what the broker can deliver (before and after the
# worker; the faster of the two counts). Also in the same run: the same loop writing every
# record unchanged to another topic (`copy`: the ceiling for a job that writes one result per
# input, as this one does), and the CPU seconds each phase cost the client, the broker and the
# S3 server, since all of them share this machine's cores. The last line:
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

# Figures go to stdout, progress to stderr; show both as they come.
cpu() { # pid -> CPU seconds (user + system) it has used
  awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"
}
BROKER_PID=$(cat "$SLUICE_ENV_DIR/kafka.pid")
S3_PID=$(cat "$SLUICE_ENV_DIR/s3.pid")
measure() { # name command...: runs it, shows its figures, returns its last line followed by
  # the CPU seconds the broker and the S3 server spent meanwhile
  local out="$SCRATCH/cdc/$1.out" b0 s0
  shift
  b0=$(cpu "$BROKER_PID") s0=$(cpu "$S3_PID")
  "$@" > "$out" && cat "$out" >&2
  echo "$(tail -n 1 "$out") broker_cpu_s=$(awk -v a="$b0" -v b="$(cpu "$BROKER_PID")" 'BEGIN {printf "%.1f", b - a}') s3_cpu_s=$(awk -v a="$s0" -v b="$(cpu "$S3_PID")" 'BEGIN {printf "%.1f", b - a}')"
}
raw1=$(measure raw1 "$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS")
copy=$(measure copy "$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS" --copy-to "$TOPIC-copy")
worker=$(measure worker "$BIN/sluice-bench" cdc --topic "$TOPIC" --events "$EVENTS" \
  --worker "$BIN/sluice-worker" --dir "$SCRATCH/cdc" --interval "$INTERVAL")
raw2=$(measure raw2 "$BIN/sluice-bench" raw --topic "$TOPIC" --events "$EVENTS")

x=$(value events_per_s "$worker")
s=$(value seconds "$worker")
y=$(printf '%s\n%s\n' "$(value events_per_s "$raw1")" "$(value events_per_s "$raw2")" | sort -n | tail -n 1)
details=$(head -n 1 "$SCRATCH/cdc/worker.out")
cpu_line() { # name figures -> name: client, broker and S3 CPU seconds
  echo "$1=$(value cpu_s "$2")+$(value broker_cpu_s "$2")+$(value s3_cpu_s "$2")"
}
c=$(value events_per_s "$copy")
echo "cdc cpu_s(client+broker+s3) $(cpu_line raw1 "$raw1") $(cpu_line copy "$copy") $(cpu_line worker "$worker") $(cpu_line raw2 "$raw2")"
echo "cdc copy_events_per_s=$c copy_seconds=$(value seconds "$copy") ratio_to_copy=$(awk -v x="$x" -v c="$c" 'BEGIN {printf "%.3f", x / c}')"
echo "cdc partitions=$PARTITIONS keys=$KEYS interval=$INTERVAL raw_runs_events_per_s=$(value events_per_s "$raw1"),$(value events_per_s "$raw2") checkpoints=$(value checkpoints "$details") pause_p50_ms=$(value pause_p50_ms "$details") pause_p99_ms=$(value pause_p99_ms "$details") peak_rss=$(sed -n 's/.*peak_rss=\([0-9.]* MiB\).*/\1/p' <<<"$details")"
echo "cdc events=$EVENTS seconds=$s events_per_s=$x raw_events_per_s=$y ratio=$(awk -v x="$x" -v y="$y" 'BEGIN {printf "%.3f", x / y}')"
