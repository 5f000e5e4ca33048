#!/usr/bin/env bash
# The local quickstart: a real CDC job on this machine, no cluster.
#   1. starts a Kafka-compatible broker on loopback (e2e/env/up.sh)
#   2. loads 60,000 Debezium change events for 10,000 customers into `quickstart.customers`
#   3. runs manifests/examples/cdc-materialize.yaml with `sluice-worker local`: every task in one
#      process, RocksDB state and file:// checkpoints under .sluice/quickstart
#   4. waits until the changelog topic has caught up, stops the job (final checkpoint) and shows
#      what it did. Run it again: the job resumes from its checkpoints and has nothing left to do.
set -euo pipefail
cd "$(dirname "$0")/.."
e2e/env/deps.sh
eval "$(e2e/env/up.sh)"
echo "quickstart: building (the first build compiles RocksDB and librdkafka: about 30 minutes on 2 cores)" >&2
cargo build --locked -q -p sluice-e2e --bin sluice-worker --bin sluice-cdc-gen
BIN="${CARGO_TARGET_DIR:-target}/debug"
STATE=.sluice/quickstart
mkdir -p "$STATE"

# The example job, pointed at the local broker and at its own topic names.
sed -e 's/dbserver1.inventory.customers/quickstart.customers/' \
    -e 's/customers-changelog/quickstart.customers-changelog/' \
    -e 's/customers-table.dlq/quickstart.customers.dlq/' \
    manifests/examples/cdc-materialize.yaml > "$STATE/job.yaml"

"$BIN/sluice-cdc-gen" --topic quickstart.customers --partitions 3 --keys 10000 \
  --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" --skip-if-loaded

"$BIN/sluice-worker" local -f "$STATE/job.yaml" --state-dir "$STATE" --http-addr 127.0.0.1:18080 \
  > "$STATE/worker.log" 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT
echo "quickstart: job running (log: $STATE/worker.log, metrics: http://127.0.0.1:18080/metrics)" >&2

metric() { # sum of a metric over all tasks; empty when no task reported it yet
  curl -s http://127.0.0.1:18080/metrics | awk -v m="$1" '$1 ~ "^"m"\\{" {s+=$2; n++} END {if (n) print s}'
}
for _ in $(seq 1 300); do
  sleep 2
  kill -0 $WORKER 2>/dev/null || { tail -n 30 "$STATE/worker.log" >&2; exit 1; }
  consumed=$(metric sluice_records_in_total); lag=$(metric sluice_lag_records)
  echo "quickstart: consumed ${consumed:-0} records this run, lag ${lag:-unknown}" >&2
  # Lag is measured every 10 s per task; done when all 3 tasks report none.
  reporting=$(curl -s http://127.0.0.1:18080/metrics | grep -c '^sluice_lag_records{' || true)
  [[ "$reporting" -ge 3 && "$lag" == 0 ]] && break
done
kill -TERM $WORKER
wait $WORKER || true
trap - EXIT
out=$(grep -c 'task stopped after its final checkpoint' "$STATE/worker.log" || true)
echo
echo "quickstart: done. $out tasks stopped after a final checkpoint."
echo "  input:      quickstart.customers (60,000 change events: create, 4 updates, delete per customer)"
echo "  output:     quickstart.customers-changelog (one record per change, tombstones for deletes)"
echo "  state:      $STATE/tasks/<task>/live (RocksDB)"
echo "  checkpoints: $STATE/checkpoints/default/customers-table/tasks/<task>/{HEAD,checkpoints,sst}"
grep -E 'checkpoint taken' "$STATE/worker.log" | tail -n 3
