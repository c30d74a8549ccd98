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
# The compose stack, on a full run only (arguments select tests): both variants of the files
# validated, then the demo on the podman variant, up, scenario, down (docs/compose.md).
if (($# == 0)); then
    if podman_env=$(bash scripts/services.sh podman); then
        eval "$podman_env"
        docker-compose -f docker-compose.yml config -q || status=1
        docker-compose -f docker-compose.yml -f docker-compose.podman.yml config -q || status=1
        bash scripts/compose-demo.sh || status=1
    else
        status=1
    fi
fi
exit "$status"
