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
