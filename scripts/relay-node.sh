#!/usr/bin/env bash
# One node of the native demo's relay (scripts/demo.sh): examples/ha-relay.toml as node NAME,
# its API on ADDRESS, in the background; its pid is kept in $SLUICE_DATA/NAME.pid and its log
# goes to stderr, each line prefixed with [sluice NAME].
#   scripts/relay-node.sh start NAME ADDRESS
#   scripts/relay-node.sh restart NAME      # kill -9, then, once another node leads, start it
#                                           # again: a standby now
# `restart` is the demo's KILL_NODE (scripts/scenario.sh appends the leader's name).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SLUICE_DATA:?set SLUICE_DATA to the data directory of the demo}"
mkdir -p "$SLUICE_DATA"

case ${1:-} in
start)
    name=${2:?the node name}
    api=${3:?the node API address}
    echo "$api" >"$SLUICE_DATA/$name.api"
    ;;
restart)
    name=${2:?the node name}
    pid=$(cat "$SLUICE_DATA/$name.pid")
    api=$(cat "$SLUICE_DATA/$name.api")
    kill -KILL "$pid"
    # Its API address is free again once the process is gone.
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    # Back only once another node leads (scripts/another-leads.sh says why).
    others=()
    for file in "$SLUICE_DATA"/*.api; do
        [ "$file" = "$SLUICE_DATA/$name.api" ] || others+=("$(cat "$file")")
    done
    bash scripts/another-leads.sh "$name" "${others[@]}" || true
    ;;
*)
    echo "usage: $0 start NAME ADDRESS | restart NAME" >&2
    exit 2
    ;;
esac

(cd "$SLUICE_DATA" && NODE_NAME=$name SLUICE_API=$api \
    exec "$OLDPWD/target/release/sluice" run "$OLDPWD/examples/ha-relay.toml") \
    2> >(sed -u "s/^/[sluice $name] /" >&2) &
echo $! >"$SLUICE_DATA/$name.pid"
