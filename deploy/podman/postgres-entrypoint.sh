#!/bin/sh
# What the postgres image's entrypoint does, for the Debian-built image: on first start, a
# cluster trusting every client (POSTGRES_HOST_AUTH_METHOD=trust: a demo, on a private network),
# then each /docker-entrypoint-initdb.d/*.sql and *.sh run against it before it serves.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb --username=postgres --auth=trust --encoding=UTF8 -D "$PGDATA" >/dev/null
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo 'host all all all trust' >>"$PGDATA/pg_hba.conf"
    echo 'host replication all all trust' >>"$PGDATA/pg_hba.conf"
    # The command's own settings (wal_level=logical: the scripts may create slots), on a socket
    # only, until the scripts are done.
    "$@" -c listen_addresses='' -c unix_socket_directories=/tmp &
    until pg_isready -q -h /tmp; do sleep 0.2; done
    export PGHOST=/tmp
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sql) psql -v ON_ERROR_STOP=1 -U postgres -d postgres -q -f "$f" ;;
            *.sh) . "$f" ;;
        esac
    done
    unset PGHOST
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$@"
