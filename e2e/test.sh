#!/usr/bin/env bash
# The test command: formatting, lints, and every test against a real broker and object store.
set -euo pipefail
cd "$(dirname "$0")/.."
e2e/env/deps.sh
eval "$(e2e/env/up.sh)"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast
# The shipping checks (Helm chart, kustomize manifests, RBAC against what the operator's code
# needs, Argo CD health check, dashboard): offline, about 10 s once their tools are installed.
rbac_needs="$(mktemp)"
trap 'rm -f "$rbac_needs"' EXIT
cargo run -q --locked -p sluice-operator -- rbac > "$rbac_needs" || {
  echo "e2e/test.sh: \`sluice-operator rbac\` failed; the RBAC check needs it to print the permissions the operator's code uses" >&2
  exit 1
}
e2e/ship/check.sh "$rbac_needs"
