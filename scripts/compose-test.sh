#!/usr/bin/env bash
# The compose stack's checks, run by scripts/test.sh after the test suite (docs/compose.md):
# both variants of the compose files validated by docker-compose; the demo refusing a host port
# that is already taken, and tearing down a stack whose service does not come up, each naming
# the service; then the whole demo on the podman variant: up, the scenario, down.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "[compose-test] $*" >&2; }
failed=()
check() {
    local name=$1 t0=$SECONDS
    shift
    if "$@"; then
        log "ok: $name ($((SECONDS - t0))s)"
    else
        log "FAILED: $name ($((SECONDS - t0))s)"
        failed+=("$name")
    fi
}

exports=$(bash scripts/services.sh podman) || { log "FAILED: scripts/services.sh podman"; exit 1; }
eval "$exports"
project=sluice-test

# stack_left: the containers of the test's project still there.
stack_left() { podman ps -aq --filter "label=io.podman.compose.project=$project"; }

# expect_failure PATTERN ENV...: the demo, run with ENV, exits non-zero, prints PATTERN and
# leaves no container behind.
expect_failure() {
    local pattern=$1 out rc=0
    shift
    out=$(env COMPOSE_PROJECT_NAME=$project "$@" bash scripts/compose-demo.sh 2>&1) || rc=$?
    if ((rc == 0)); then
        log "the demo passed where it should have failed"
        return 1
    fi
    if ! grep -q -- "$pattern" <<<"$out"; then
        printf '%s\n' "$out" | tail -n 20 >&2
        log "the demo failed without saying: $pattern"
        return 1
    fi
    if [[ -n $(stack_left) ]]; then
        log "the demo left containers behind: $(stack_left | tr '\n' ' ')"
        return 1
    fi
    grep -- "$pattern" <<<"$out" | head -n 1 >&2
}

port_taken() {
    local port rc=0
    # A listener on a free port, held for the run; the gateway is told to publish there.
    exec {holder}< <(exec python3 -c '
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(3600)
' 2>/dev/null)
    local pid=$!
    read -r -u "$holder" port
    expect_failure "host port $port, published for service gateway (its port 8080), is already taken: free it or choose another with GATEWAY_PORT=PORT" GATEWAY_PORT="$port" || rc=1
    kill "$pid" 2>/dev/null
    exec {holder}<&-
    return "$rc"
}

check "docker-compose config -q (docker-compose.yml)" docker-compose -f docker-compose.yml config -q
check "docker-compose config -q (with docker-compose.podman.yml)" \
    docker-compose -f docker-compose.yml -f docker-compose.podman.yml config -q
check "a host port already taken is named, nothing starts" port_taken
check "a service that does not come up is named, the stack torn down" \
    expect_failure "did not pass its healthcheck within 1s" SERVICE_TIMEOUT=1
check "the demo on the compose stack" bash scripts/compose-demo.sh

if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all compose checks passed"
