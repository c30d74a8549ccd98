#!/usr/bin/env bash
# Run the whole test suite against real local services (scripts/services.sh).
# Extra arguments go to `cargo nextest run` (or to `cargo test` where nextest is missing).
# Without arguments the compose stack is checked too: its files, and the demo on it.
set -euo pipefail
cd "$(dirname "$0")/.."

exports=$(bash scripts/services.sh up)
eval "$exports"

status=0
# Doc tests first, so that the last test summary printed is the main suite's.
cargo test --workspace --doc || status=1
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast "$@" || status=1
else
    echo "[test] cargo-nextest not installed; using cargo test" >&2
    cargo test --workspace --all-targets --no-fail-fast "$@" || status=1
fi
# The compose stack, on a full run only (arguments select tests): its files validated, its
# failures named, the demo on it under podman (docs/compose.md).
if (($# == 0)); then bash scripts/compose-test.sh || status=1; fi
exit "$status"
