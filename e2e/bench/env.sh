# Sourced by the benchmarks: a release build and servers of their own (a fresh in-memory
# broker on other ports than the tests' servers, stopped on exit), so every run measures the
# same thing and the test servers are left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SLUICE_ENV_DIR="${SLUICE_BENCH_ENV_DIR:-$HOME/.cache/sluice/bench-env}"
export SLUICE_KAFKA_PORT="${SLUICE_BENCH_KAFKA_PORT:-29092}"
export SLUICE_S3_PORT="${SLUICE_BENCH_S3_PORT:-29000}"
# The other servers up.sh starts, off the tests' ports too.
export SLUICE_TLS_PORT=29093 SLUICE_TLS_BROKER_PORT=29094 SLUICE_SASL_PORT=29095
export SLUICE_GROW_PORT=29096 SLUICE_SASL_PROXY_PORT=29097
export SLUICE_SASL_PROXY_BROKER_PORT=29098 SLUICE_AZURE_PORT=29010 SLUICE_GCS_PORT=29020
BIN="${CARGO_TARGET_DIR:-target}/release"
SCRATCH="${SLUICE_BENCH_DIR:-.sluice/bench}"

bench_build() {
  e2e/env/deps.sh
  echo "bench: building release binaries (the first release build compiles RocksDB: about 30 minutes on 2 cores)" >&2
  cargo build --release --locked -q -p sluice-e2e --bins
}

bench_servers() {
  e2e/env/down.sh
  eval "$(e2e/env/up.sh)"
  trap e2e/env/down.sh EXIT
}
