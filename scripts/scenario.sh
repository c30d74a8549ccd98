#!/usr/bin/env bash
# The demo's scenario, run against a system that is already running (scripts/demo.sh starts it
# natively): orders flow through the highly available relay while its leader is killed and a
# standby takes over; requests go through the gateway with JWTs, hit the Redis cache, are rate
# limited, and a product updated in PostgreSQL is served fresh once CDC evicted its entry; ids
# come from the id endpoint behind the gateway. Prints what happens as it happens; exits 0 only
# when every order was applied exactly once, the failover happened and the gateway checks held,
# else names what failed.
#
# Given only by environment variables:
#   DATABASE_URL           the order service's database (orders, outbox, products)
#   CONSUMER_DATABASE_URL  the order consumer's database (customer_totals)
#   GATEWAY_URL            the gateway of examples/demo-gateway.toml, http://host:port
#   RELAY_APIS             the relay nodes' API addresses, space-separated host:port, each
#                          optionally named NAME=host:port (the name is the host otherwise)
#   JWT_SECRET             the gateway's HS256 secret (never printed)
#   ORDERS                 how many orders the order service writes
#   KILL_NODE              a command to which the leader's name is appended: it kills that
#                          node (kill -9, podman kill, ...) and starts it again as a standby
#   FAILOVER_TIMEOUT (30), ORDERS_TIMEOUT (120): seconds to wait for each, at most
set -euo pipefail

for var in DATABASE_URL CONSUMER_DATABASE_URL GATEWAY_URL RELAY_APIS JWT_SECRET ORDERS KILL_NODE; do
    if [ -z "${!var:-}" ]; then
        echo "[scenario] $var is not set: see the top of $0 for what it must hold" >&2
        exit 2
    fi
done
for tool in curl psql python3; do
    command -v "$tool" >/dev/null || { echo "[scenario] $tool is missing: install it (Debian: curl, postgresql-client, python3)" >&2; exit 2; }
done
FAILOVER_TIMEOUT=${FAILOVER_TIMEOUT:-30}
ORDERS_TIMEOUT=${ORDERS_TIMEOUT:-120}

log() { echo "[scenario] $*" >&2; }
failures=()
fail() {
    log "FAILED: $*"
    failures+=("$*")
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

declare -A api=()
nodes=()
for entry in $RELAY_APIS; do
    if [[ $entry == *=* ]]; then name=${entry%%=*} address=${entry#*=}; else name=${entry%%:*} address=$entry; fi
    api[$name]=$address
    nodes+=("$name")
done

# --- Reading the system -------------------------------------------------------------------

# The sum of a metric's series in a /metrics text.
metric() { awk -v n="$2" '$1 ~ "^"n"[{ ]" {v+=$2} END {printf "%d", v}' <<<"$1"; }
metrics_of() { curl -fsS --max-time 2 "http://${api[$1]}/metrics" 2>/dev/null; }
# The node whose sluice_leader gauge is 1, if any (other than $1 when given).
leader() {
    local name
    for name in "${nodes[@]}"; do
        [ "$name" != "${1:-}" ] || continue
        if [ "$(metric "$(metrics_of "$name")" sluice_leader)" = 1 ]; then
            echo "$name"
            return
        fi
    done
}
sql() { psql -X -tAq "$1" -c "$2"; }
committed() { sql "$DATABASE_URL" "SELECT count(*) FROM orders" 2>/dev/null || echo 0; }
applied() { sql "$CONSUMER_DATABASE_URL" "SELECT coalesce(sum(orders), 0) FROM customer_totals" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
report() {
    local m="" at=${1:-}
    [ -z "$at" ] || m=$(metrics_of "$at") || true
    log "committed $(committed)  read from the WAL $(metric "$m" sluice_postgres_cdc_events_total)  confirmed by RabbitMQ $(metric "$m" sluice_rabbitmq_confirmed_messages_total)  slot lag $(metric "$m" sluice_postgres_cdc_replication_lag_bytes) B  applied $(applied)${at:+  (leader: node $at)}"
}

# An HS256 token for user $1, valid ten minutes; the secret is read from the environment, never
# put on a command line.
token() {
    python3 - "$1" <<'EOF'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": sys.argv[1], "exp": int(time.time()) + 600}).encode())
mac = hmac.new(os.environ["JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256)
print(f"{head}.{body}.{b64(mac.digest())}")
EOF
}

# GET $1 through the gateway with token $2 (none when empty): sets status, cache and body.
get() {
    local auth=()
    [ -z "${2:-}" ] || auth=(-H "Authorization: Bearer $2")
    status=$(curl -sS --max-time 5 -o "$scratch/body" -D "$scratch/head" -w '%{http_code}' "${auth[@]}" "$GATEWAY_URL$1") || status=000
    cache=$(awk -F': *' 'tolower($1) == "x-cache" {gsub("\r", "", $2); print $2}' "$scratch/head" 2>/dev/null)
    body=$(cat "$scratch/body" 2>/dev/null)
}

# --- Orders through the relay, across a failover -------------------------------------------

log "waiting for orders to flow through the relay (nodes: ${nodes[*]})"
deadline=$((SECONDS + 60))
until [ "$(applied)" -gt 0 ]; do
    [ $SECONDS -lt $deadline ] || { fail "no order reached the consumer within 60 s"; break; }
    sleep 0.5
done
first=$(leader)
if [ -z "$first" ]; then
    fail "no relay node reports sluice_leader 1"
else
    log "node $first leads; the others wait as standbys"
fi

killed= next=
give_up=$((SECONDS + ORDERS_TIMEOUT))
while [ -n "$first" ] && [ -z "$killed" ]; do
    report "$first"
    if [ "$(applied)" -ge $((ORDERS / 3)) ]; then
        killed=$first
        log "a third of the orders are applied: killing the leader, node $killed ($KILL_NODE $killed)"
        t0=$(now)
        bash -c "$KILL_NODE $(printf %q "$killed")" || fail "KILL_NODE failed for node $killed"
        deadline=$((SECONDS + FAILOVER_TIMEOUT))
        until next=$(leader "$killed") && [ -n "$next" ]; do
            if [ $SECONDS -ge $deadline ]; then
                fail "no standby took over within $FAILOVER_TIMEOUT s of killing node $killed"
                break
            fi
            sleep 0.1
        done
        [ -z "$next" ] || log "FAILOVER: node $next took over from node $killed after $(since "$t0") s"
    elif [ $SECONDS -ge $give_up ]; then
        fail "a third of the orders were not applied within $ORDERS_TIMEOUT s"
        break
    else
        sleep 1
    fi
done

# --- The gateway -------------------------------------------------------------------------

user="demo-$(date +%s)-$$"
jwt=$(token "$user")
log "gateway $GATEWAY_URL, as user $user (HS256 token)"

get /api/products/1
if [ "$status" = 401 ]; then log "no token: 401"; else fail "GET /api/products/1 without a token answered $status, not 401"; fi
get /api/products/1 "$(JWT_SECRET=not-the-secret-of-the-gateway token "$user")"
if [ "$status" = 401 ]; then log "token signed with another secret: 401"; else fail "a token signed with another secret answered $status, not 401"; fi

# A product of this run only, so that no earlier run's cached answer is found.
product=$(($(date +%s) * 1000 + RANDOM % 1000))
sql "$DATABASE_URL" "INSERT INTO products (id, name, price) VALUES ($product, 'Demo lamp', 19.90)" >/dev/null
get "/api/products/$product" "$jwt"
if [ "$status" = 200 ] && [ "$cache" = MISS ]; then
    log "GET /api/products/$product: 200, X-Cache: MISS (from the products service) $body"
else
    fail "the first GET /api/products/$product answered $status, X-Cache: ${cache:-none} (expected 200, MISS)"
fi
get "/api/products/$product" "$jwt"
if [ "$status" = 200 ] && [ "$cache" = HIT ]; then
    log "GET /api/products/$product again: 200, X-Cache: HIT (from Redis)"
else
    fail "the second GET /api/products/$product answered $status, X-Cache: ${cache:-none} (expected 200, HIT)"
fi

t0=$(now)
sql "$DATABASE_URL" "UPDATE products SET price = 24.50, updated_at = now() WHERE id = $product" >/dev/null
log "UPDATE products SET price = 24.50 WHERE id = $product (in PostgreSQL)"
fresh=
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    get "/api/products/$product" "$jwt"
    if [ "$status" = 200 ] && [[ $body == *24.50* ]]; then
        fresh=$cache
        break
    fi
    sleep 0.1
done
if [ "$fresh" = MISS ]; then
    log "CDC evicted cache:products:$product: served fresh after $(since "$t0") s, X-Cache: MISS $body"
elif [ -n "$fresh" ]; then
    fail "the updated product was served with X-Cache: $fresh, not MISS"
else
    fail "the updated product was still not served fresh 15 s after the UPDATE (last: $status, X-Cache: ${cache:-none})"
fi

limited=
for n in $(seq 1 10); do
    get /api/limited/products/1 "$jwt"
    if [ "$status" = 429 ]; then
        limited=$n
        break
    fi
    [ "$status" = 200 ] || { fail "GET /api/limited/products/1 answered $status before any 429"; break; }
done
if [ -n "$limited" ]; then
    log "rate limit: request $limited of the minute on /api/limited/products/1 got 429 $(grep -i '^retry-after' "$scratch/head" | tr -d '\r')"
else
    fail "10 requests on /api/limited/products/1 within a minute got no 429"
fi

get "/api/ids/orders?count=3" "$jwt"
ids=$(grep -oE '"[0-9]+"' <<<"$body" | tr -d '"' | sort -u | wc -l)
if [ "$status" = 200 ] && [ "$ids" = 3 ]; then
    log "GET /api/ids/orders?count=3: Snowflake ids $(tr -d '\n' <<<"$body")"
else
    fail "GET /api/ids/orders?count=3 answered $status with $ids distinct ids: $body"
fi
get /api/ids/events "$jwt"
if [ "$status" = 200 ] && [[ $body == *-7* ]]; then
    log "GET /api/ids/events: a UUID v7 $(tr -d '\n' <<<"$body")"
else
    fail "GET /api/ids/events answered $status: $body"
fi

# --- Every order applied exactly once -------------------------------------------------------

at=${next:-$first}
deadline=$((SECONDS + ORDERS_TIMEOUT))
until [ "$(committed)" -ge "$ORDERS" ] && [ "$(applied)" -ge "$(committed)" ]; do
    if [ $SECONDS -ge $deadline ]; then
        fail "after $ORDERS_TIMEOUT s, $(committed) of $ORDERS orders committed, $(applied) applied"
        break
    fi
    report "$at"
    sleep 1
done
report "$at"
# Per customer, the orders the service committed against those the consumer applied.
sql "$DATABASE_URL" "SELECT customer, count(*) FROM orders GROUP BY customer ORDER BY customer" >"$scratch/committed"
sql "$CONSUMER_DATABASE_URL" "SELECT customer, orders FROM customer_totals ORDER BY customer" >"$scratch/applied"
total=$(committed)
if [ "$total" -ne "$ORDERS" ]; then
    fail "the order service committed $total orders, not $ORDERS"
elif ! diff -q "$scratch/committed" "$scratch/applied" >/dev/null; then
    fail "the consumer's per-customer counts differ from the orders committed: $(diff "$scratch/committed" "$scratch/applied" | grep -c '^[<>]') lines differ (sum applied $(applied) of $total)"
else
    log "all $total orders applied exactly once (per customer, as committed)"
fi

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
            if (total == 0) { printf "-"; exit }
            for (i = 0; i < n; i++) {
                if (count[les[i]] >= rank) {
                    if (les[i] == "+Inf") { printf "> %.1f", lower * 1000; exit }
                    width = count[les[i]] - below
                    printf "%.1f", (lower + (les[i] - lower) * (width ? (rank - below) / width : 0)) * 1000; exit
                }
                lower = les[i]; below = count[les[i]]
            }
        }' <<<"$2"
}
if [ -n "$at" ] && m=$(metrics_of "$at"); then
    log "commit -> broker confirm on node $at, since it leads: p50 $(quantile 0.5 "$m") ms, p99 $(quantile 0.99 "$m") ms (sluice_rabbitmq_commit_to_confirm_latency_seconds)"
fi

if [ ${#failures[@]} -gt 0 ]; then
    log "${#failures[@]} check(s) failed:"
    printf '[scenario]   - %s\n' "${failures[@]}" >&2
    exit 1
fi
log "PASSED: every order applied exactly once across the failover from node $killed to node $next; 401 without a token, MISS then HIT, 429 over the limit, the updated product served fresh, ids from the gateway"
