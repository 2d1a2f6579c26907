#!/usr/bin/env bash
# Crash soak: the kill -9 harness of tests/it/crash.rs
# (`crash_kill9_loses_no_acknowledged_write`), for N iterations (default 500),
# in release mode. Set ALIASD_CRASH_SEED to replay a run.
#
#   scripts/crash-soak.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
export ALIASD_CRASH_ITERATIONS="${1:-500}"
exec cargo test --release --test it crash::crash_kill9 -- --nocapture
