#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the runtime and pod-worker tests, and the
# end-to-end scenarios with real cloudcore, edgecore, containerd (a private one per test, with
# its own socket, root and CNI subnet), mosquitto and kubectl on loopback. Needs root for
# containerd and pod networking.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${SKERRY_TEST_THREADS:-2}"
