#!/usr/bin/env bash
# Waits until a relay node other than NAME leads (its /metrics says sluice_leader 1): what the
# demos' kill commands wait for before they start a killed node again. A node back under its
# name at once would still be the one its election is assigned to (the assignment is sticky,
# docs/high-availability.md) and lead again after the TTL, instead of a standby taking over.
#   scripts/another-leads.sh NAME [NAME=]HOST:PORT ...   # exits 1 after 30 s without one
set -uo pipefail
name=${1:?the killed node name}
shift
for _ in $(seq 300); do
    for entry in "$@"; do
        [[ $entry == "$name="* ]] && continue
        if curl -fsS "http://${entry#*=}/metrics" 2>/dev/null |
            awk '$1 == "sluice_leader" || $1 ~ /^sluice_leader[{]/ {v += $2} END {exit !(v >= 1)}'; then
            exit 0
        fi
    done
    sleep 0.1
done
echo "no node other than $name leads within 30 s" >&2
exit 1
