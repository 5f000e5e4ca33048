#!/usr/bin/env bash
# Install the system packages the build needs, when missing (idempotent). On Debian and Ubuntu it
# installs them with apt-get; elsewhere it names what to install and carries on.
set -euo pipefail
# pkg-config, libssl-dev, zlib1g-dev: librdkafka (TLS, SASL-SCRAM, compression);
# libclang-dev: bindgen for RocksDB; python3-venv (only when python3 lacks venv): e2e/env/up.sh
# installs its servers into a venv.
PACKAGES=(pkg-config libssl-dev zlib1g-dev libclang-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || PACKAGES+=(python3-venv)
command -v dpkg-query >/dev/null || {
  echo "e2e/env/deps.sh: not a Debian system; make sure you have: ${PACKAGES[*]}" >&2
  exit 0
}
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "e2e/env/deps.sh: installing ${missing[*]}" >&2
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
