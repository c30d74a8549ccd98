#!/usr/bin/env bash
# The main job, end to end: starts the local services, builds sluice, runs the demo pipeline
# and prints what flows through it every second until it finishes (or Ctrl-C, which drains).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/services.sh up)"
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null

echo "[demo] building sluice (release)" >&2
cargo build --release --quiet --bin sluice

config=examples/generator.toml
export SLUICE_DATA=${SLUICE_DATA:-target/demo-data}
export SLUICE_API=${SLUICE_API:-127.0.0.1:9464}
rm -rf "$SLUICE_DATA"
echo "[demo] sluice run $config (data in $SLUICE_DATA, metrics on http://$SLUICE_API/metrics)" >&2
target/release/sluice run "$config" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM

value() { # value METRICS NAME COMPONENT
    awk -v n="$2" -v c="component_id=\"$3\"" '$1 ~ "^"n"\\{" && index($1, c) {v=$2} END {printf "%d", v}' <<<"$1"
}
last=0
while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    m=$(curl -fsS "http://$SLUICE_API/metrics" 2>/dev/null) || continue
    sent=$(value "$m" sluice_component_sent_events_total orders)
    written=$(value "$m" sluice_component_received_events_total file)
    dropped=$(value "$m" sluice_component_dropped_events_total not_key_0)
    checkpoint=$(value "$m" sluice_source_checkpoint_position orders)
    printf '[demo] generated %8d  written %8d (%5d/s)  filtered out %6d  checkpoint %8d\n' \
        "$sent" "$written" "$((written - last))" "$dropped" "$checkpoint" >&2
    last=$written
done
wait "$pid"
echo "[demo] done: $(wc -l <"$SLUICE_DATA/orders.jsonl") events in $SLUICE_DATA/orders.jsonl, checkpoint $(cat "$SLUICE_DATA/checkpoints/orders.json")" >&2
