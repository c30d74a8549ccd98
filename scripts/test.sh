#!/usr/bin/env bash
# Run the whole test suite against real local services (scripts/services.sh).
# Extra arguments go to `cargo nextest run` (or to `cargo test` where nextest is missing).
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
exit "$status"
