#!/bin/sh
# The demo's databases, run once when the postgres container creates its cluster (from
# /docker-entrypoint-initdb.d): sluice_demo with the order service's tables, the outbox and
# the products, and sluice_demo_consumer for the consumer's projection and inbox.
#
# The relay's publication and slot are made here too, before any order can be written: the
# order service may start before either relay node leads, and an outbox row committed before
# the slot exists would never be read from the WAL. The relay finds them and starts from there.
set -eu
psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
    -c 'CREATE DATABASE sluice_demo' -c 'CREATE DATABASE sluice_demo_consumer'
psql -v ON_ERROR_STOP=1 -q -U postgres -d sluice_demo \
    -f /sluice/sql/orders.sql -f /sluice/sql/outbox.sql -f /sluice/sql/products.sql \
    -c 'CREATE PUBLICATION sluice_demo FOR TABLE public.outbox' \
    -c "SELECT FROM pg_create_logical_replication_slot('sluice_demo', 'pgoutput')"
