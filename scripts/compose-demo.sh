#!/usr/bin/env bash
# The demo on the compose stack: docker-compose.yml with docker-compose.podman.yml, under
# podman, on images built here (scripts/services.sh podman sets podman up and builds the base
# image once). Builds sluice and the example apps (debug) and every image, starts each service
# once the services it depends on answer, then runs scripts/scenario.sh against the published
# ports: orders flow through the two relay nodes while the leader's container is killed, and
# requests go through the gateway. Tears the stack down on every way out.
#   scripts/compose-demo.sh            (also: scripts/demo.sh --compose)
#   ORDERS=6000 RATE=200 scripts/compose-demo.sh
# Exits non-zero naming the service that failed: an image that does not build, a host port
# already taken, a container that exits or does not answer within SERVICE_TIMEOUT seconds
# (default 180); its last log lines are printed. Logs are kept in target/compose/.
#
# `scripts/compose-demo.sh kill-node NAME` kills relay node NAME's container (SIGKILL) and
# starts it again: the KILL_NODE command scenario.sh is given.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${COMPOSE_PROJECT_NAME:-sluice}
export COMPOSE_PROJECT_NAME=$PROJECT
FILES=(-f docker-compose.yml -f docker-compose.podman.yml)
LOGS=target/compose
# Not started here: Grafana (no Debian package); the order service is started last, once
# everything else answers, so that the scenario sees its orders from the first one.
SKIP=grafana
LAST=order-service
SERVICE_TIMEOUT=${SERVICE_TIMEOUT:-180}

log() { echo "[compose] $*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

# podman-compose names a service's container <project>_<service>_1.
container() { echo "${PROJECT}_$1_1"; }

if [[ ${1:-} == kill-node ]]; then
    [[ -n ${2:-} ]] || fail "usage: $0 kill-node NAME (the relay node's NODE_NAME: a or b)"
    c=$(container "relay-$2")
    [[ -n ${CONTAINERS_CONF:-} ]] || eval "$(bash scripts/services.sh podman 2>/dev/null)"
    started_at() { podman container inspect -f '{{.State.Running}} {{.State.StartedAt}}' "$c"; }
    before=$(started_at) || fail "no container $c for relay node $2"
    podman kill --signal KILL "$c" >/dev/null || fail "podman kill $c failed"
    # Down, or already brought back by its restart policy; then up again either way.
    deadline=$((SECONDS + 30))
    while now=$(started_at) && [[ $now == "$before" ]]; do
        ((SECONDS < deadline)) || fail "$c still runs 30 s after podman kill"
        sleep 0.1
    done
    # Back only once another node leads (scripts/another-leads.sh says why); RELAY_APIS is
    # the scenario's, which runs this.
    # shellcheck disable=SC2086
    bash scripts/another-leads.sh "$2" ${RELAY_APIS:-} || true
    podman start "$c" >/dev/null || fail "podman start $c failed"
    exit 0
fi

eval "$(bash scripts/services.sh podman)"
mkdir -p "$LOGS"
compose() { podman-compose -p "$PROJECT" "${FILES[@]}" "$@"; }

# The merged compose files as lines the script reads: `service NAME HEALTHCHECK DEPS`
# (dependencies first), `port SERVICE HOST_IP HOST_PORT CONTAINER_PORT VARIABLE`, `build IMAGE
# CONTEXT DOCKERFILE TARGET SERVICES` (one per image).
plan() {
    docker-compose "${FILES[@]}" config | python3 -c '
import re, sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
# The variable that sets each published port, from the file as written.
raw = yaml.safe_load(open("docker-compose.yml"))["services"]
port_vars = {}
for name, s in raw.items():
    for p in s.get("ports", []):
        m = re.search(r"\$\{(\w+):-\d+\}:(\d+)", str(p))
        if m:
            port_vars[name, m.group(2)] = m.group(1)
done = []
def visit(name):
    if name in done:
        return
    for dep in services[name].get("depends_on", {}):
        visit(dep)
    done.append(name)
for name in sorted(services):
    visit(name)
builds = {}
for name in done:
    s = services[name]
    print("service", name, "yes" if "healthcheck" in s else "no", ",".join(s.get("depends_on", {})) or "-")
    b = s.get("build")
    if b:
        builds.setdefault(s["image"], (b, []))[1].append(name)
    for p in s.get("ports", []):
        ip, host, target = str(p).split("/")[0].split(":")
        print("port", name, ip, host, target, port_vars.get((name, target), "-"))
for image, (b, users) in builds.items():
    print("build", image, b["context"], b.get("dockerfile", "Dockerfile"), b.get("target", "-"), ",".join(users))
'
}
plan_lines=$(plan) || fail "docker-compose could not read docker-compose.yml and docker-compose.podman.yml"

declare -A healthcheck=() deps=() host_port=() port_var=()
services=()
while read -r kind a b c d e; do
    case $kind in
        service)
            [[ " $SKIP " == *" $a "* ]] && continue
            services+=("$a") healthcheck[$a]=$b deps[$a]=${c//,/ }
            ;;
        port) [[ " $SKIP " == *" $a "* ]] || host_port[$a:$d]=$c port_var[$a:$d]=$e ;;
    esac
done <<<"$plan_lines"

# The stack goes on every way out; a failing service's last log lines come first.
failed_service=
started=
teardown() {
    local rc=$?
    if [[ -n $failed_service ]]; then
        log "last log lines of $failed_service:"
        podman logs --tail 30 "$(container "$failed_service")" 2>&1 | sed "s/^/[$failed_service] /" >&2 || true
    fi
    if [[ -n $started ]]; then
        local t0=$SECONDS
        log "tearing the stack down"
        compose down -v -t 5 >"$LOGS/down.log" 2>&1 || log "podman-compose down failed (log: $LOGS/down.log)"
        # podman-compose leaves the network it made.
        podman network rm "${PROJECT}_default" >/dev/null 2>&1 || true
        log "stack down ($((SECONDS - t0))s)"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

t_start=$SECONDS
log "building sluice and the example apps (debug) for the sluice image"
nice cargo build --quiet -p sluice -p sluice-examples || fail "cargo build of sluice and the example apps failed"
rm -rf target/compose-bin
mkdir -p target/compose-bin
for bin in sluice order-service order-consumer products-service; do
    strip -o "target/compose-bin/$bin" "target/debug/$bin" || fail "no target/debug/$bin to put in the sluice image"
done

while read -r kind image context dockerfile target users; do
    [[ $kind == build ]] || continue
    t0=$SECONDS
    args=(-t "$image" -f "$context/$dockerfile")
    [[ $target == - ]] || args+=(--target "$target")
    if ! nice podman build "${args[@]}" "$context" >"$LOGS/build-${image##*/}.log" 2>&1; then
        tail -n 20 "$LOGS/build-${image##*/}.log" >&2
        fail "the image of service ${users//,/, } ($image) did not build (log: $LOGS/build-${image##*/}.log)"
    fi
    log "image $image built ($((SECONDS - t0))s)"
done <<<"$plan_lines"

# Leftovers of an earlier run that was killed before it could tear down.
if [[ -n $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT") ]]; then
    log "removing the containers an earlier run left"
    compose down -v -t 5 >"$LOGS/down.log" 2>&1 || true
fi

for key in "${!host_port[@]}"; do
    port=${host_port[$key]}
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        fail "host port $port, published for service ${key%%:*} (its port ${key#*:}), is already taken: free it or choose another with ${port_var[$key]}=PORT"
    fi
done

t_up=$SECONDS
started=1
if ! compose up --no-build --no-start "${services[@]}" >"$LOGS/up.log" 2>&1; then
    tail -n 5 "$LOGS/up.log" >&2
    fail "podman-compose could not create the stack (log: $LOGS/up.log)"
fi
for svc in "${services[@]}"; do
    podman container exists "$(container "$svc")" || {
        grep -i -A3 error "$LOGS/up.log" | tail -n 20 >&2 || true
        fail "podman-compose did not create the container of service $svc (log: $LOGS/up.log)"
    }
done

# Healthchecks do not run on their own under podman: run a service's, or wait for its
# container to run, until it passes. A container that exits fails at once, unless its restart
# policy brings it back (the consumer exits until a relay has declared its queue) and it has
# not yet exited MAX_RESTARTS times.
MAX_RESTARTS=5
declare -A ready=()
wait_ready() {
    local svc=$1 c running code restarts policy deadline=$((SECONDS + SERVICE_TIMEOUT))
    [[ -n ${ready[$svc]:-} ]] && return 0
    c=$(container "$svc")
    while :; do
        read -r running code restarts policy <<<"$(podman container inspect -f \
            '{{.State.Running}} {{.State.ExitCode}} {{.RestartCount}} {{.HostConfig.RestartPolicy.Name}}' "$c")"
        if [[ $running == true ]]; then
            if [[ ${healthcheck[$svc]} != yes ]] || podman healthcheck run "$c" >/dev/null 2>&1; then break; fi
        elif [[ $policy != on-failure ]] || ((restarts >= MAX_RESTARTS)); then
            failed_service=$svc
            fail "service $svc exited (exit code $code, after $restarts restarts)"
        fi
        if ((SECONDS >= deadline)); then
            failed_service=$svc
            if [[ ${healthcheck[$svc]} == yes ]]; then
                fail "service $svc did not pass its healthcheck within ${SERVICE_TIMEOUT}s"
            fi
            fail "service $svc was not running after ${SERVICE_TIMEOUT}s (exit code $code, $restarts restarts)"
        fi
        sleep 1
    done
    ready[$svc]=1
    log "$svc is up"
}

start() {
    local svc=$1 dep out
    for dep in ${deps[$svc]}; do [[ $dep == - ]] || wait_ready "$dep"; done
    out=$(podman start "$(container "$svc")" 2>&1) || {
        log "$out"
        failed_service=$svc
        fail "service $svc did not start"
    }
}

for svc in "${services[@]}"; do [[ $svc == "$LAST" ]] || start "$svc"; done
for svc in "${services[@]}"; do [[ $svc == "$LAST" ]] || wait_ready "$svc"; done
log "stack up ($((SECONDS - t_up))s; $((t_up - t_start))s building)"
start "$LAST"

ORDERS=$(podman container inspect -f '{{range .Config.Cmd}}{{.}} {{end}}' "$(container "$LAST")" | awk '{for (i = 1; i < NF; i++) if ($i == "--count") print $(i + 1)}')
export ORDERS
pg=postgres://postgres@127.0.0.1:${host_port[postgres:5432]}
export DATABASE_URL=$pg/sluice_demo CONSUMER_DATABASE_URL=$pg/sluice_demo_consumer
export GATEWAY_URL=http://127.0.0.1:${host_port[gateway:8080]}
# The relay nodes, named by their NODE_NAME as the services are (relay-a is node a).
RELAY_APIS=
for svc in "${services[@]}"; do
    [[ $svc == relay-* ]] && RELAY_APIS+="${RELAY_APIS:+ }${svc#relay-}=127.0.0.1:${host_port[$svc:9464]}"
done
export RELAY_APIS
export JWT_SECRET=${JWT_SECRET:-sluice-demo-secret-not-for-production}
export KILL_NODE="bash scripts/compose-demo.sh kill-node"
t_scenario=$SECONDS
log "scenario: $ORDERS orders, relays at $RELAY_APIS, gateway at $GATEWAY_URL"
if ! bash scripts/scenario.sh; then
    fail "the scenario failed (above)"
fi
log "scenario passed ($((SECONDS - t_scenario))s; stack up to scenario end $((SECONDS - t_up))s)"
