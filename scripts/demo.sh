#!/usr/bin/env bash
# The whole system, natively: starts the local services, builds sluice and the example apps,
# then runs
#   - the outbox relay on three nodes of examples/ha-relay.toml (a, b and c, APIs on
#     127.0.0.1:9464-9466) under one etcd election: only the leader reads the WAL;
#   - the order service (each order and its outbox row in one transaction) and the idempotent
#     order consumer behind RabbitMQ;
#   - the products service, and in front of it the gateway of examples/demo-gateway.toml (JWT,
#     Redis cache and rate limit, CDC invalidation of the cache, ids; API on 127.0.0.1:9467);
# and scripts/scenario.sh against them: the relay's leader is killed with kill -9 a third of
# the way through and a standby takes over, requests go through the gateway, a product updated
# in PostgreSQL is served fresh, ids come from the gateway, and every order must be applied
# exactly once. Exits with the scenario's status.
#   ORDERS=6000 RATE=200 scripts/demo.sh
# Addresses: RELAY_PORT (9464, and the next two), GATEWAY_ADDR (127.0.0.1:8080), GATEWAY_API
# (127.0.0.1:9467), PRODUCTS_ADDR (127.0.0.1:3001). HA=1, which once chose the three-node
# relay, is now always the case and is accepted for compatibility.
# --compose runs it on the compose stack instead (scripts/compose-demo.sh, docs/compose.md).
set -euo pipefail
# --compose: the same scenario on the docker-compose stack, run under podman.
if [[ ${1:-} == --compose ]]; then exec bash "$(dirname "$0")/compose-demo.sh" "${@:2}"; fi
cd "$(dirname "$0")/.."

ORDERS=${ORDERS:-6000}
RATE=${RATE:-200}
RELAY_PORT=${RELAY_PORT:-9464}
GATEWAY_ADDR=${GATEWAY_ADDR:-127.0.0.1:8080}
GATEWAY_API=${GATEWAY_API:-127.0.0.1:9467}
PRODUCTS_ADDR=${PRODUCTS_ADDR:-127.0.0.1:3001}
READY_TIMEOUT=${READY_TIMEOUT:-60}
JWT_SECRET=${JWT_SECRET:-sluice-demo-secret-not-for-production}
export SLUICE_DATA=$PWD/target/demo-data JWT_SECRET

log() { echo "[demo] $*" >&2; }
eval "$(bash scripts/services.sh up)"
for tool in curl python3; do
    command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null
done

# Every address the demo listens on, checked before anything starts.
declare -A node_api=()
listeners=()
port=$RELAY_PORT
for name in a b c; do
    node_api[$name]=127.0.0.1:$port
    listeners+=("relay node $name's API (RELAY_PORT)=127.0.0.1:$port")
    port=$((port + 1))
done
listeners+=("the gateway (GATEWAY_ADDR)=$GATEWAY_ADDR" "the gateway's API (GATEWAY_API)=$GATEWAY_API"
    "the products service (PRODUCTS_ADDR)=$PRODUCTS_ADDR")
for listener in "${listeners[@]}"; do
    address=${listener##*=}
    if (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null; then
        log "FAILED: $address, for ${listener%=*}, is already taken: stop what listens there or choose another address"
        exit 1
    fi
done

log "building sluice and the example apps (release)"
cargo build --release --quiet -p sluice -p sluice-examples

# A fresh start every time: the demo's databases, slots and queue are its own.
server=${DATABASE_URL%/*}
drop_slots() {
    psql -X -q "$DATABASE_URL" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('sluice_demo', 'sluice_demo_products') AND NOT active" >/dev/null
}
drop_slots
for db in sluice_demo sluice_demo_consumer; do
    psql -X -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
done
rabbitmqctl -q delete_queue orders >/dev/null 2>&1 || true
rm -rf "$SLUICE_DATA"
mkdir -p "$SLUICE_DATA"
export DATABASE_URL=$server/sluice_demo CONSUMER_DATABASE_URL=$server/sluice_demo_consumer
psql -X -q "$DATABASE_URL" -f examples/sql/orders.sql -f examples/sql/outbox.sql -f examples/sql/products.sql

pids=()
# On the way out: stop every process (the relay nodes by the pids they left, since a restarted
# one is not this shell's child), and drop the slots so that they hold no WAL. The databases
# stay, to look at: sluice_demo and sluice_demo_consumer.
cleanup() {
    local status=$? pid file
    trap - EXIT INT TERM
    for file in "$SLUICE_DATA"/*.pid; do
        [ -e "$file" ] && pids+=("$(cat "$file")")
    done
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    drop_slots 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT INT TERM

# Waits until $2 answers, as long as process $3 lives; names $1 and exits otherwise.
ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS --max-time 2 "$2" >/dev/null 2>&1; do
        if ! kill -0 "$3" 2>/dev/null; then
            log "FAILED: $1 exited before it was ready (its log is above)"
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "FAILED: $1 was not ready within $READY_TIMEOUT s ($2 does not answer 200; its log is above)"
            exit 1
        fi
        sleep 0.2
    done
}

log "relay: nodes a, b and c of examples/ha-relay.toml (APIs ${node_api[a]}, ${node_api[b]}, ${node_api[c]}), one etcd election"
for name in a b c; do scripts/relay-node.sh start "$name" "${node_api[$name]}"; done
for name in a b c; do ready "relay node $name" "http://${node_api[$name]}/ready" "$(cat "$SLUICE_DATA/$name.pid")"; done

log "products service on http://$PRODUCTS_ADDR"
PRODUCTS_ADDR=$PRODUCTS_ADDR target/release/products-service &
pids+=($!)
ready "the products service" "http://$PRODUCTS_ADDR/health" $!

log "gateway on http://$GATEWAY_ADDR (examples/demo-gateway.toml, API and ids on http://$GATEWAY_API)"
(SLUICE_API=$GATEWAY_API GATEWAY_ADDR=$GATEWAY_ADDR PRODUCTS_URL=http://$PRODUCTS_ADDR SLUICE_DATA=$SLUICE_DATA/gateway \
    exec target/release/sluice run examples/demo-gateway.toml) 2> >(sed -u 's/^/[sluice gateway] /' >&2) &
pids+=($!)
ready "the gateway" "http://$GATEWAY_API/ready" $!

target/release/order-consumer --queue orders &
pids+=($!)
log "order-service: $ORDERS orders at $RATE/s"
target/release/order-service --count "$ORDERS" --rate "$RATE" &
pids+=($!)

relays=
for name in a b c; do relays+="$name=${node_api[$name]} "; done
GATEWAY_URL=http://$GATEWAY_ADDR RELAY_APIS=$relays ORDERS=$ORDERS KILL_NODE="scripts/relay-node.sh restart" \
    bash scripts/scenario.sh
