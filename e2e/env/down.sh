#!/usr/bin/env bash
# Stop what e2e/env/up.sh started. Harmless when nothing runs. The broker keeps its data in
# memory, so stopping it discards every topic.
set -euo pipefail
ENV_DIR="${SLUICE_ENV_DIR:-$HOME/.cache/sluice/env}"
for name in kafka kafka-tls kafka-tls-broker kafka-sasl kafka-sasl-proxy kafka-sasl-proxy-broker kafka-grow s3 azure gcs; do
  pidfile="$ENV_DIR/$name.pid"
  [[ -f "$pidfile" ]] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "e2e/env: stopped $name (pid $pid)" >&2
  fi
  rm -f "$pidfile"
done
