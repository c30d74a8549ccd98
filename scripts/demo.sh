#!/usr/bin/env bash
# The outbox demo, end to end: starts the local services, builds sluice and the example apps,
# then an order service commits orders (business row + outbox row in one transaction), sluice
# relays the outbox from the WAL to RabbitMQ, and an idempotent consumer applies each order
# exactly once. Prints what flows every second, then checks that every order arrived once.
#   ORDERS=6000 RATE=200 scripts/demo.sh
# HA=1 runs the highly available relay instead: examples/ha-relay.toml on three nodes (a, b and
# c, APIs on 127.0.0.1:9464-9466) under one etcd election; a third of the way through, the
# leader is killed with kill -9, a standby takes over (the time it took is printed), and the
# killed node comes back as a standby.
#   HA=1 ORDERS=6000 RATE=200 scripts/demo.sh
# --compose runs it on the compose stack instead (scripts/compose-demo.sh, docs/compose.md).
set -euo pipefail
# --compose: the same scenario on the docker-compose stack, run under podman.
if [[ ${1:-} == --compose ]]; then exec bash "$(dirname "$0")/compose-demo.sh" "${@:2}"; fi
cd "$(dirname "$0")/.."

ORDERS=${ORDERS:-6000}
RATE=${RATE:-200}
HA=${HA:-}
eval "$(bash scripts/services.sh up)"
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null

log() { echo "[demo] $*" >&2; }
log "building sluice and the example apps (release)"
cargo build --release --quiet -p sluice -p sluice-examples

# A fresh start every time: the demo's databases, slot and queue are its own.
server=${DATABASE_URL%/*}
export SLUICE_API=${SLUICE_API:-127.0.0.1:9464} SLUICE_DATA=target/demo-data
psql -q "$DATABASE_URL" -c "SELECT pg_drop_replication_slot('sluice_demo') FROM pg_replication_slots WHERE slot_name = 'sluice_demo' AND NOT active" >/dev/null
for db in sluice_demo sluice_demo_consumer; do
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
done
rabbitmqctl -q delete_queue orders >/dev/null 2>&1 || true
rm -rf "$SLUICE_DATA"
export DATABASE_URL=$server/sluice_demo CONSUMER_DATABASE_URL=$server/sluice_demo_consumer
psql -q "$DATABASE_URL" -f examples/sql/orders.sql -f examples/sql/outbox.sql

pids=()
# On the way out: stop the processes, and drop the slot so that it holds no WAL (the databases
# stay, to look at: sluice_demo and sluice_demo_consumer).
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    psql -q "$DATABASE_URL" -c "SELECT pg_drop_replication_slot('sluice_demo') FROM pg_replication_slots WHERE slot_name = 'sluice_demo' AND NOT active" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

ready() {
    until curl -fsS "http://$1/ready" >/dev/null 2>&1; do
        kill -0 "$2" 2>/dev/null || { log "sluice ($1) exited"; exit 1; }
        sleep 0.2
    done
}
metric() { awk -v n="$2" '$1 ~ "^"n"[{ ]" {v+=$2} END {printf "%d", v}' <<<"$1"; }

declare -A node_pid=() node_api=()
if [[ -n $HA ]]; then
    # One relay on three nodes: only the leader of election outbox-relay reads the WAL.
    start_node() {
        local name=$1
        log "node $name: sluice run examples/ha-relay.toml (NODE_NAME=$name SLUICE_API=${node_api[$name]})"
        (cd "$SLUICE_DATA" && NODE_NAME=$name SLUICE_API=${node_api[$name]} \
            exec "$OLDPWD/target/release/sluice" run "$OLDPWD/examples/ha-relay.toml") \
            2> >(sed "s/^/[sluice $name] /" >&2) &
        node_pid[$name]=$!
        pids+=($!)
    }
    mkdir -p "$SLUICE_DATA"
    port=9464
    for name in a b c; do
        node_api[$name]=127.0.0.1:$port
        port=$((port + 1))
        start_node "$name"
    done
    for name in a b c; do ready "${node_api[$name]}" "${node_pid[$name]}"; done
    # The node whose sluice_leader gauge is 1, if any.
    leader() {
        local name
        for name in a b c; do
            if [ "$(metric "$(curl -fsS "http://${node_api[$name]}/metrics" 2>/dev/null)" sluice_leader)" = 1 ]; then
                echo "$name"
                return
            fi
        done
    }
    until [ -n "$(leader)" ]; do sleep 0.2; done
    first=$(leader)
    SLUICE_API=${node_api[$first]}
    log "node $first leads election outbox-relay; the other two wait as standbys"
else
    log "sluice run examples/outbox-demo.toml (metrics on http://$SLUICE_API/metrics)"
    target/release/sluice run examples/outbox-demo.toml 2> >(sed 's/^/[sluice] /' >&2) &
    pids+=($!)
    ready "$SLUICE_API" "${pids[0]}"
fi
target/release/order-consumer --queue orders &
pids+=($!)
log "order-service: $ORDERS orders at $RATE/s"
target/release/order-service --count "$ORDERS" --rate "$RATE" &
service=$!

applied() { psql -tAq "$CONSUMER_DATABASE_URL" -c "SELECT coalesce(sum(orders), 0) FROM customer_totals" 2>/dev/null || echo 0; }
report() {
    local m
    m=$(curl -fsS "http://$SLUICE_API/metrics" 2>/dev/null) || return 0
    log "read from WAL $(metric "$m" sluice_postgres_cdc_events_total)  confirmed by RabbitMQ $(metric "$m" sluice_rabbitmq_confirmed_messages_total)  slot lag $(metric "$m" sluice_postgres_cdc_replication_lag_bytes) bytes  applied by the consumer $(applied)"
}
killed=
while kill -0 "$service" 2>/dev/null; do
    sleep 1
    report
    if [[ -n $HA && -z $killed ]] && [ "$(applied)" -ge $((ORDERS / 3)) ]; then
        killed=$(leader)
        log "kill -9 the leader, node $killed (pid ${node_pid[$killed]}), while orders flow"
        kill -KILL "${node_pid[$killed]}"
        t0=$(date +%s.%N)
        until next=$(leader) && [ -n "$next" ] && [ "$next" != "$killed" ]; do sleep 0.1; done
        log "node $next took over after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s (TTL 5 s)"
        SLUICE_API=${node_api[$next]}
        start_node "$killed"
        ready "${node_api[$killed]}" "${node_pid[$killed]}"
        log "node $killed is back, as a standby"
    fi
done
wait "$service"
deadline=$((SECONDS + 60))
until [ "$(applied)" -ge "$ORDERS" ] || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
report

m=$(curl -fsS "http://$SLUICE_API/metrics")
# As histogram_quantile does, over the buckets summed across label sets: in ms.
quantile() {
    awk -v q="$1" '
        $1 ~ /^sluice_rabbitmq_commit_to_confirm_latency_seconds_bucket\{/ {
            match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5)
            count[le] += $2; if (!(le in seen)) { seen[le] = 1; les[n++] = le }
        }
        END {
            # The exporter prints the buckets in ascending order, +Inf last.
            total = count[les[n - 1]]; rank = q * total; lower = 0; below = 0
            for (i = 0; i < n; i++) {
                if (count[les[i]] >= rank) {
                    if (les[i] == "+Inf") { printf "> %.1f", lower * 1000; exit }
                    width = count[les[i]] - below
                    printf "%.1f", (lower + (les[i] - lower) * (width ? (rank - below) / width : 0)) * 1000; exit
                }
                lower = les[i]; below = count[les[i]]
            }
        }' <<<"$m"
}
log "commit -> broker confirm: p50 $(quantile 0.5) ms, p99 $(quantile 0.99) ms (sluice_rabbitmq_commit_to_confirm_latency_seconds)"
committed=$(psql -tAq "$DATABASE_URL" -c "SELECT count(*) FROM orders")
outbox=$(psql -tAq "$DATABASE_URL" -c "SELECT count(*) FROM outbox")
total=$(applied)
log "orders committed: $committed; outbox rows: $outbox; orders applied exactly once by the consumer: $total"
if [ "$total" -ne "$committed" ]; then
    log "MISMATCH: the consumer applied $total of $committed orders"
    exit 1
fi
if [[ -n $HA ]]; then
    log "every order arrived exactly once, across the failover from node $killed to node $next"
else
    log "every order arrived exactly once"
fi
