#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the process-runtime and pod-worker tests, and the
# end-to-end scenarios with real cloudcore, edgecore and mosquitto processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${SKERRY_TEST_THREADS:-2}"
