#!/usr/bin/env bash
# The outbox demo, end to end: starts the local services, builds sluice and the example apps,
# then an order service commits orders (business row + outbox row in one transaction), sluice
# relays the outbox from the WAL to RabbitMQ, and an idempotent consumer applies each order
# exactly once. Prints what flows every second, then checks that every order arrived once.
#   ORDERS=6000 RATE=200 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ORDERS=${ORDERS:-6000}
RATE=${RATE:-200}
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

log "sluice run examples/outbox-demo.toml (metrics on http://$SLUICE_API/metrics)"
target/release/sluice run examples/outbox-demo.toml 2> >(sed 's/^/[sluice] /' >&2) &
pids+=($!)
until curl -fsS "http://$SLUICE_API/ready" >/dev/null 2>&1; do
    kill -0 "${pids[0]}" 2>/dev/null || { log "sluice exited"; exit 1; }
    sleep 0.2
done
target/release/order-consumer --queue orders &
pids+=($!)
log "order-service: $ORDERS orders at $RATE/s"
target/release/order-service --count "$ORDERS" --rate "$RATE" &
service=$!

metric() { awk -v n="$2" '$1 ~ "^"n"[{ ]" {v+=$2} END {printf "%d", v}' <<<"$1"; }
applied() { psql -tAq "$CONSUMER_DATABASE_URL" -c "SELECT coalesce(sum(orders), 0) FROM customer_totals" 2>/dev/null || echo 0; }
report() {
    local m
    m=$(curl -fsS "http://$SLUICE_API/metrics" 2>/dev/null) || return 0
    log "read from WAL $(metric "$m" sluice_postgres_cdc_events_total)  confirmed by RabbitMQ $(metric "$m" sluice_rabbitmq_confirmed_messages_total)  slot lag $(metric "$m" sluice_postgres_cdc_replication_lag_bytes) bytes  applied by the consumer $(applied)"
}
while kill -0 "$service" 2>/dev/null; do
    sleep 1
    report
done
wait "$service"
deadline=$((SECONDS + 60))
until [ "$(applied)" -ge "$ORDERS" ] || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
report

m=$(curl -fsS "http://$SLUICE_API/metrics")
quantile() { awk -v q="$1" '$1 ~ /^sluice_rabbitmq_commit_to_confirm_latency_seconds\{/ && index($1, "quantile=\""q"\"") {printf "%.1f", $2 * 1000}' <<<"$m"; }
log "commit -> broker confirm: p50 $(quantile 0.5) ms, p99 $(quantile 0.99) ms (sluice_rabbitmq_commit_to_confirm_latency_seconds)"
committed=$(psql -tAq "$DATABASE_URL" -c "SELECT count(*) FROM orders")
outbox=$(psql -tAq "$DATABASE_URL" -c "SELECT count(*) FROM outbox")
total=$(applied)
log "orders committed: $committed; outbox rows: $outbox; orders applied exactly once by the consumer: $total"
if [ "$total" -ne "$committed" ]; then
    log "MISMATCH: the consumer applied $total of $committed orders"
    exit 1
fi
log "every order arrived exactly once"
