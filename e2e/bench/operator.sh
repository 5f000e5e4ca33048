#!/usr/bin/env bash
# Control-plane load: 500 StreamJobs in 5 namespaces applied with one `kubectl apply` to the
# fake API server, reconciled by a real operator process against the benchmark's own broker and
# S3 server (no worker processes). Prints the latency from a job being stored to its first
# status (p50, p99, max), one reconcile's duration from the operator's histogram, and the
# operator's peak RSS. It is `e2e/tests/operator_scale.rs`, which the test command skips
# (`#[ignore]`): figures are a benchmark's business, and on a loaded CI machine it once waited
# out nextest's 10-minute limit.
source "$(dirname "$0")/env.sh"
e2e/env/deps.sh
bench_servers
cargo nextest run --locked -p sluice-e2e --test operator_scale --run-ignored only --no-capture
