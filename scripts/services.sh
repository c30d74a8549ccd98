#!/usr/bin/env bash
# Local services for sluice's tests and for local development (DESIGN.md §7):
# PostgreSQL (wal_level=logical), RabbitMQ, etcd, Redis and ZooKeeper, all on loopback, and
# Python's kazoo (Debian python3-kazoo), the ZooKeeper recipe library sluice's tests
# interoperate with; and curl, openssl, nginx-light, haproxy and wrk for the gateway's tests and
# benchmark (installed only: the benchmark starts its own nginx and HAProxy); chromium with
# chromium-driver for the console's browser test (installed only); and Prometheus for the
# dashboards' test (installed only: the test runs its own).
#
#   scripts/services.sh up      install what is missing (Debian, as root), start what is not
#                               answering, wait until all answer, print the export lines
#   scripts/services.sh env     print the export lines:  eval "$(scripts/services.sh env)"
#   scripts/services.sh status  one line per service; exits non-zero if any is down
#   scripts/services.sh down    stop only what this script started
#   scripts/services.sh podman  for the compose stack only: install podman, runc, docker-compose
#                               and podman-compose, write a containers.conf for this machine,
#                               build the base image localhost/debian:bookworm (debootstrap,
#                               once), print the export line (CONTAINERS_CONF)
#
# `up` is idempotent: where everything already runs and is configured it changes nothing.
# Progress goes to stderr; only the export lines go to stdout.
#
# TLS (for the TLS tests and for trying sluice against TLS servers): `up` makes a local CA and
# server/client certificates under $STATE_DIR/tls (openssl, once), serves PostgreSQL's TLS with
# them (ssl=on, a reload, no restart) and adds hostssl rules for two roles: sluice_scram
# (SCRAM-SHA-256 password, kept in $STATE_DIR/tls/pg-password) and sluice_cert (client
# certificate, CN=sluice_cert). RabbitMQ gets a TLS listener on 5671 that verifies client
# certificates when sent, and the EXTERNAL mechanism (rabbitmq_auth_mechanism_ssl) for the
# user sluice_cert; adding that listener restarts RabbitMQ once. The management plugin
# (HTTP API on 127.0.0.1:15672, which `sluice check` asks whether a route reaches a queue) is
# enabled too. The plain ports stay as they
# are. The server certificate names `localhost` only, not 127.0.0.1, so that connecting by
# address with full verification shows a host name mismatch. `env` also prints
# DATABASE_TLS_URL, AMQPS_URL (full verification against the local CA) and SLUICE_TEST_CA
# (that CA's PEM file; untrusted-ca.pem beside it is a CA that signed nothing).
#
# The script manages the standard local ports below. DATABASE_URL, AMQP_URL,
# ETCD_ENDPOINTS, REDIS_URL and ZOOKEEPER_ENDPOINTS, if already set, are passed through unchanged by `env`/`up`
# (to point the tests elsewhere); they do not change which local servers are managed.
#
# Environment knobs: SLUICE_SERVICES_STATE (state dir, default /var/lib/sluice-services
# as root), SLUICE_SERVICES_TIMEOUT (seconds to wait for each service, default 120).
set -euo pipefail

PG_PORT=5432
AMQP_PORT=5672
AMQPS_PORT=5671
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
REDIS_PORT=6379
ZK_PORT=2181

# Minimums for PostgreSQL: tests create many logical replication slots in parallel.
PG_MIN_REPLICATION_SLOTS=64
PG_MIN_WAL_SENDERS=64

if [[ $(id -u) -eq 0 ]]; then
    STATE_DIR=${SLUICE_SERVICES_STATE:-/var/lib/sluice-services}
else
    STATE_DIR=${SLUICE_SERVICES_STATE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/sluice-services}
fi
TIMEOUT=${SLUICE_SERVICES_TIMEOUT:-120}

ETCD_DATA_DIR=$STATE_DIR/etcd-data
ETCD_LOG=$STATE_DIR/etcd.log
ETCD_PIDFILE=$STATE_DIR/etcd.pid
ETCD_EP=http://127.0.0.1:$ETCD_CLIENT_PORT
REDIS_LOG=/var/log/redis/ci.log
# ZooKeeper: Debian's package ships the jars and zkCli.sh but starts nothing; this script runs
# a standalone server with its own config, data and log under the state dir.
ZK_HOME=/usr/share/zookeeper
ZK_JAR=/usr/share/java/zookeeper.jar
ZK_CONF_DIR=$STATE_DIR/zookeeper-conf
ZK_CFG=$ZK_CONF_DIR/zoo.cfg
ZK_DATA_DIR=$STATE_DIR/zookeeper-data
ZK_LOG=$STATE_DIR/zookeeper.log
ZK_PIDFILE=$STATE_DIR/zookeeper.pid
RABBIT_LOG_DIR=/var/log/rabbitmq
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
TLS_DIR=$STATE_DIR/tls
TLS_CA=$TLS_DIR/ca.pem
# Roles the TLS set-up creates: one with a SCRAM password, one identified by its certificate
# (PostgreSQL `cert` auth and RabbitMQ EXTERNAL both take the user from the certificate's CN).
PG_SCRAM_ROLE=sluice_scram
TLS_CERT_USER=sluice_cert

export ETCDCTL_API=3
# etcd 3.4 refuses to start on arm64 unless told to.
if [[ $(uname -m) == aarch64 ]]; then export ETCD_UNSUPPORTED_ARCH=arm64; fi

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $(id -u) -eq 0 ]]; }
need_root() { is_root || die "$1 needs root (run as root or sudo)"; }

print_env() {
    printf 'export DATABASE_URL=%q\n' "${DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/postgres}"
    printf 'export AMQP_URL=%q\n' "${AMQP_URL:-amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f}"
    printf 'export ETCD_ENDPOINTS=%q\n' "${ETCD_ENDPOINTS:-$ETCD_EP}"
    printf 'export REDIS_URL=%q\n' "${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
    printf 'export ZOOKEEPER_ENDPOINTS=%q\n' "${ZOOKEEPER_ENDPOINTS:-127.0.0.1:$ZK_PORT}"
    if [[ -r $TLS_CA ]]; then
        local pw=''
        pw=$(cat "$TLS_DIR/pg-password" 2>/dev/null) || true
        printf 'export DATABASE_TLS_URL=%q\n' "${DATABASE_TLS_URL:-postgres://$PG_SCRAM_ROLE:$pw@localhost:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$TLS_CA}"
        printf 'export AMQPS_URL=%q\n' "${AMQPS_URL:-amqps://guest:guest@localhost:$AMQPS_PORT/%2f?cacertfile=$TLS_CA}"
        printf 'export SLUICE_TEST_CA=%q\n' "${SLUICE_TEST_CA:-$TLS_CA}"
    fi
}

# wait_until NAME LOGFILE CMD...: poll CMD until it succeeds or TIMEOUT seconds pass.
wait_until() {
    local name=$1 logfile=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "$name did not answer within ${TIMEOUT}s; last lines of $logfile:"
            # shellcheck disable=SC2086 # $logfile may be a glob
            tail -n 30 $logfile >&2 2>/dev/null || true
            die "$name is not answering (log: $logfile)"
        fi
        sleep 0.5
    done
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# our_pid PIDFILE CMDLINE_PART: the pid in PIDFILE if that process is alive and its command
# line holds CMDLINE_PART (so that a reused pid is not taken for ours), else nothing.
our_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$2"; then
        echo "$pid"
    fi
}

# answering_or_gone NAME ADDRESS LOG READY_FN PID_FN: for waiting on a server this script
# runs: ready, or fail at once (with the log's tail) when no process of ours is left.
answering_or_gone() {
    "$4" && return 0
    if [[ -z $("$5") ]]; then
        tail -n 30 "$3" >&2 2>/dev/null || true
        die "$1 exited or is not answering on $2 (log: $3)"
    fi
    return 1
}

# stop_pid NAME PID PIDFILE: stop PID (TERM, then KILL after 10 s) and forget PIDFILE.
stop_pid() {
    if [[ -n $2 ]]; then
        log "stopping $1 (pid $2)"
        kill -TERM "$2" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$2" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$2" 2>/dev/null; then kill -KILL "$2" 2>/dev/null || true; fi
    fi
    rm -f "$3"
}

# ---------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------

pg_server_installed() {
    command -v pg_ctlcluster >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

missing_packages() {
    pg_server_installed || echo postgresql
    command -v rabbitmq-server >/dev/null || echo rabbitmq-server
    command -v etcd >/dev/null || echo etcd-server
    command -v etcdctl >/dev/null || echo etcd-client
    { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } || echo redis-server
    command -v protoc >/dev/null || echo protobuf-compiler
    # etcd-client's build compiles etcd's protocol files, which import protobuf's own.
    [[ -r /usr/include/google/protobuf/descriptor.proto ]] || echo libprotobuf-dev
    { [[ -r $ZK_JAR && -x $ZK_HOME/bin/zkCli.sh ]] && command -v java >/dev/null; } || echo zookeeper
    /usr/bin/python3 -c 'import kazoo' 2>/dev/null || echo python3-kazoo
    # The gateway's tests and benchmark: HTTP and TLS tools, the reverse proxies it is measured
    # beside (never started as services: the benchmark runs its own) and the load generator.
    command -v curl >/dev/null || echo curl
    command -v openssl >/dev/null || echo openssl
    command -v nginx >/dev/null || echo nginx-light
    command -v haproxy >/dev/null || echo haproxy
    command -v wrk >/dev/null || echo wrk
    # The console's browser test: headless Chromium driven over WebDriver.
    { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || printf '%s\n' chromium chromium-driver
    # The dashboards' test (tests/e2e/dashboards.rs): Prometheus, never started as a service
    # (the test runs its own, on a free port with its own config and data directory).
    command -v prometheus >/dev/null || echo prometheus
}

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BACKUP=$POLICY_RC.sluice-services-backup
POLICY_OURS=

restore_policy_rc() {
    [[ -n $POLICY_OURS ]] || return 0
    rm -f "$POLICY_RC"
    if [[ -e $POLICY_BACKUP ]]; then mv -f "$POLICY_BACKUP" "$POLICY_RC"; fi
    POLICY_OURS=
}

install_packages() {
    local pkgs
    mapfile -t pkgs < <(missing_packages)
    ((${#pkgs[@]})) || return 0
    need_root "installing ${pkgs[*]}"
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them"
    local fresh_rabbit=
    [[ " ${pkgs[*]} " == *" rabbitmq-server "* ]] && fresh_rabbit=1

    # Without systemd, the packages' postinst scripts start their daemons through
    # invoke-rc.d and the SysV scripts (etcd's as user etcd with its own data dir, on our
    # port), and a start that fails there fails the whole install. Deny every start with a
    # policy-rc.d for the duration of the install; this script starts what it needs itself.
    # An existing policy that already denies starts (exit 101, as in Docker images) is kept;
    # any other one is moved aside and put back afterwards.
    if [[ ! -e $POLICY_RC ]] || { "$POLICY_RC" sluice-probe start >/dev/null 2>&1; [[ $? -ne 101 ]]; }; then
        [[ -e $POLICY_RC ]] && mv -f "$POLICY_RC" "$POLICY_BACKUP"
        POLICY_OURS=1
        trap restore_policy_rc EXIT
        printf '#!/bin/sh\n# temporary, from sluice scripts/services.sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi

    log "installing: ${pkgs[*]} (apt-get update first)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
    restore_policy_rc
    trap - EXIT

    local m
    m=$(missing_packages)
    [[ -z $m ]] || die "still missing after install: $m"

    # A fresh RabbitMQ names its node rabbit@<hostname>, which fails to boot where the
    # hostname does not resolve, and listens on every interface. Pin it to loopback,
    # unless the machine already configures a node name.
    if [[ -n $fresh_rabbit ]] && ! grep -qs '^[[:space:]]*NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
        log "configuring RabbitMQ for loopback (/etc/rabbitmq/rabbitmq-env.conf)"
        mkdir -p /etc/rabbitmq
        printf '%s\n' '# added by sluice scripts/services.sh: loopback-only node' \
            'NODENAME=rabbit@localhost' 'NODE_IP_ADDRESS=127.0.0.1' 'ERL_EPMD_ADDRESS=127.0.0.1' \
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' \
            >>/etc/rabbitmq/rabbitmq-env.conf
    fi
}

# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------

PG_VER='' PG_NAME='' PG_STATUS='' PG_DATADIR='' PG_LOG=''

# Find the cluster (a version dir under /etc/postgresql) serving $PG_PORT, else the
# newest one. Returns 1 if there is none.
pg_find_cluster() {
    local line=''
    if command -v pg_lsclusters >/dev/null; then
        line=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p' | head -n1)
        [[ -n $line ]] || line=$(pg_lsclusters -h 2>/dev/null | sort -k1,1nr | head -n1)
    fi
    [[ -n $line ]] || return 1
    read -r PG_VER PG_NAME _ PG_STATUS _ PG_DATADIR PG_LOG <<<"$line"
}

# Create cluster 'main' if a server is installed but no cluster exists.
pg_ensure_cluster() {
    pg_find_cluster && return 0
    local ver
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -nr | head -n1)
    [[ -n $ver ]] || die "no PostgreSQL server installed"
    need_root "creating PostgreSQL cluster $ver/main"
    log "creating PostgreSQL cluster $ver/main on port $PG_PORT"
    pg_createcluster --port "$PG_PORT" "$ver" main >&2 || die "pg_createcluster $ver main failed"
    pg_find_cluster || die "no PostgreSQL cluster after pg_createcluster"
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

# Run SQL as the postgres superuser over the Unix socket (peer/trust for the postgres OS
# user on every Debian install), so it works before loopback TCP is trusted.
pg_sql() {
    if is_root; then
        (cd / && runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
    else
        psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
    fi
}

pg_postmaster_pid() { head -n1 "$PG_DATADIR/postmaster.pid" 2>/dev/null || true; }

pg_start() {
    pg_ensure_cluster
    if pg_ready; then return; fi
    if [[ $PG_STATUS == down ]]; then
        need_root "starting PostgreSQL"
        log "starting PostgreSQL cluster $PG_VER/$PG_NAME"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" start >&2 ||
            die "PostgreSQL $PG_VER/$PG_NAME failed to start (log: $PG_LOG)"
        mkdir -p "$STATE_DIR"
        pg_postmaster_pid >"$STATE_DIR/postgresql.pid"
    fi
}

pg_settings() {
    pg_sql -F ' ' -c "SELECT current_setting('wal_level'), current_setting('max_replication_slots'), current_setting('max_wal_senders')"
}

pg_configure() {
    local wal slots senders
    read -r wal slots senders <<<"$(pg_settings)"
    [[ -n $senders ]] || die "could not read settings from PostgreSQL $PG_VER/$PG_NAME (log: $PG_LOG)"
    local -a alter=()
    [[ $wal == logical ]] || alter+=("ALTER SYSTEM SET wal_level = 'logical'")
    ((slots >= PG_MIN_REPLICATION_SLOTS)) || alter+=("ALTER SYSTEM SET max_replication_slots = $PG_MIN_REPLICATION_SLOTS")
    ((senders >= PG_MIN_WAL_SENDERS)) || alter+=("ALTER SYSTEM SET max_wal_senders = $PG_MIN_WAL_SENDERS")
    if ((${#alter[@]})); then
        need_root "reconfiguring PostgreSQL"
        log "PostgreSQL has wal_level=$wal max_replication_slots=$slots max_wal_senders=$senders;" \
            "setting wal_level=logical and slots/senders >= 64, restarting $PG_VER/$PG_NAME"
        local stmt old_pid
        old_pid=$(pg_postmaster_pid)
        for stmt in "${alter[@]}"; do pg_sql -c "$stmt"; done
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" restart >&2 ||
            die "PostgreSQL $PG_VER/$PG_NAME failed to restart (log: $PG_LOG)"
        wait_until PostgreSQL "$PG_LOG" pg_ready
        # We restarted it: if we had started it, keep tracking the new postmaster.
        if [[ -n $old_pid && $(cat "$STATE_DIR/postgresql.pid" 2>/dev/null) == "$old_pid" ]]; then
            pg_postmaster_pid >"$STATE_DIR/postgresql.pid"
        fi
        read -r wal slots senders <<<"$(pg_settings)"
        if [[ $wal != logical ]] || ((slots < PG_MIN_REPLICATION_SLOTS || senders < PG_MIN_WAL_SENDERS)); then
            die "PostgreSQL still has wal_level=$wal max_replication_slots=$slots max_wal_senders=$senders after restart (set on its command line?)"
        fi
    fi

    # Tests connect as the postgres superuser over 127.0.0.1 without a password. A fresh
    # Debian install uses scram-sha-256 for TCP; for LOCAL DEVELOPMENT AND CI ONLY we put
    # 'trust' rules for loopback first in pg_hba.conf. Only loopback is trusted, and
    # PostgreSQL listens on localhost only by default. A reload applies it (no restart).
    if ! psql -X -w -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
        need_root "trusting loopback in pg_hba.conf"
        local hba
        hba=$(pg_sql -c 'SHOW hba_file')
        if ! grep -q '^# sluice-services: begin' "$hba"; then
            log "making loopback TCP 'trust' for local development in $hba"
            local tmp
            tmp=$(mktemp)
            {
                echo '# sluice-services: begin (scripts/services.sh) -- trust loopback TCP, for local development/CI only'
                echo 'host    all             all             127.0.0.1/32            trust'
                echo 'host    all             all             ::1/128                 trust'
                echo 'host    replication     all             127.0.0.1/32            trust'
                echo 'host    replication     all             ::1/128                 trust'
                echo '# sluice-services: end'
                cat "$hba"
            } >"$tmp"
            cat "$tmp" >"$hba" # keep the file's owner and mode
            rm -f "$tmp"
        fi
        pg_sql -c 'SELECT pg_reload_conf()' >/dev/null
        sleep 0.5
        psql -X -w -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null ||
            die "cannot connect as postgres to 127.0.0.1:$PG_PORT without a password (see $hba)"
    fi
}

# ---------------------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------------------

rabbit_ready() { rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && tcp_open "$AMQP_PORT"; }
rabbit_node_up() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_os_pid() { rabbitmqctl -q eval 'list_to_integer(os:getpid()).' 2>/dev/null || true; }

RABBIT_STARTED=
rabbit_start() {
    if rabbit_ready; then return; fi
    if rabbit_node_up; then
        log "RabbitMQ node is up but still booting; waiting"
        return
    fi
    need_root "starting RabbitMQ"
    log "starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached >&2 || die "rabbitmq-server -detached failed (logs: $RABBIT_LOG_DIR/)"
    RABBIT_STARTED=1
}

# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------

redis_ready() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
redis_os_pid() {
    timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null |
        tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }'
}

REDIS_STARTED=
redis_start() {
    if redis_ready; then return; fi
    need_root "starting Redis"
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile "$REDIS_LOG" >&2 || die "redis-server failed to start (log: $REDIS_LOG)"
    REDIS_STARTED=1
}

# ---------------------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------------------

etcd_ready() {
    if command -v etcdctl >/dev/null; then
        etcdctl --endpoints="$ETCD_EP" --dial-timeout=1s --command-timeout=3s endpoint health >/dev/null 2>&1
    else
        [[ $(curl -fsS -m 3 "$ETCD_EP/health" 2>/dev/null) == *'"health":"true"'* ]]
    fi
}

# Pid from our pid file if that process is alive and is our etcd, else nothing.
etcd_our_pid() {
    local pid
    pid=$(our_pid "$ETCD_PIDFILE" "--data-dir $ETCD_DATA_DIR")
    if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == etcd ]]; then
        echo "$pid"
    fi
}

etcd_check() { answering_or_gone etcd "127.0.0.1:$ETCD_CLIENT_PORT" "$ETCD_LOG" etcd_ready etcd_our_pid; }

etcd_start() {
    if etcd_ready; then return; fi
    if [[ -n $(etcd_our_pid) ]]; then
        log "etcd (pid $(etcd_our_pid)) is running but not answering yet; waiting"
        return
    fi
    mkdir -p "$STATE_DIR"
    mkdir -p "$ETCD_DATA_DIR"
    chmod 700 "$ETCD_DATA_DIR"
    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT (data $ETCD_DATA_DIR, log $ETCD_LOG)"
    # setsid: its own session, so it outlives the shell (and CI step) that started it.
    setsid etcd --name sluice --data-dir "$ETCD_DATA_DIR" --logger zap \
        --listen-client-urls "$ETCD_EP" --advertise-client-urls "$ETCD_EP" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "sluice=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state new --initial-cluster-token sluice-local \
        --auto-compaction-mode periodic --auto-compaction-retention 1h \
        >>"$ETCD_LOG" 2>&1 </dev/null &
    echo $! >"$ETCD_PIDFILE"
}

# ---------------------------------------------------------------------------------------
# ZooKeeper
# ---------------------------------------------------------------------------------------

# tickTime 500 ms lets sessions be negotiated from 2 s (minSessionTimeout, sluice's smallest
# TTL) to 60 s, and expires them within half a second of their timeout (the server checks
# expiry once per tick: with 1 s ticks a 2 s session lasted 3 s). No admin HTTP server (it would take port 8080); the four-letter words stay for
# probes (srvr, ruok, mntr) and for the tests that check who watches what (wchp); no limit on
# connections from one address (every sluice session and watch is a connection, and all the
# tests come from 127.0.0.1; the default is 60); autopurge keeps the data dir small.
zk_config() {
    cat <<CFG
# written by sluice scripts/services.sh: standalone, loopback only
tickTime=500
minSessionTimeout=2000
maxSessionTimeout=60000
dataDir=$ZK_DATA_DIR
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr,wchp
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
}

zk_log4j() {
    printf '%s\n' '# written by sluice scripts/services.sh' \
        'log4j.rootLogger=INFO, CONSOLE' \
        'log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender' \
        'log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout' \
        'log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n'
}

# Answers `srvr` (allowed by default, unlike ruok) with a serving mode.
zk_ready() {
    local reply
    reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && printf srvr >&3 && cat <&3" 2>/dev/null) || return 1
    [[ $reply == *'Mode: '* ]]
}

# Pid from our pid file if that process is alive and is our ZooKeeper, else nothing.
zk_our_pid() { our_pid "$ZK_PIDFILE" "QuorumPeerMain $ZK_CFG"; }

zk_check() { answering_or_gone ZooKeeper "127.0.0.1:$ZK_PORT" "$ZK_LOG" zk_ready zk_our_pid; }

# Write FILE from stdin only when its content differs, so a second `up` changes nothing.
write_if_changed() {
    local file=$1 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -e $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    chmod 644 "$file"
}

zk_start() {
    if zk_ready; then
        if [[ -n $(zk_our_pid) ]] && ! zk_config | cmp -s - "$ZK_CFG"; then
            log "note: ZooKeeper runs with an older $ZK_CFG; 'down' then 'up' applies the new one"
        fi
        return
    fi
    if [[ -n $(zk_our_pid) ]]; then
        log "ZooKeeper (pid $(zk_our_pid)) is running but not answering yet; waiting"
        return
    fi
    command -v java >/dev/null || die "ZooKeeper needs java (Debian default-jre-headless)"
    mkdir -p "$ZK_CONF_DIR" "$ZK_DATA_DIR"
    chmod 700 "$ZK_DATA_DIR"
    if zk_config | write_if_changed "$ZK_CFG"; then log "wrote $ZK_CFG"; fi
    zk_log4j | write_if_changed "$ZK_CONF_DIR/log4j.properties" || true
    log "starting ZooKeeper on 127.0.0.1:$ZK_PORT (data $ZK_DATA_DIR, log $ZK_LOG)"
    # The jar's manifest names its dependencies; log4j 1.2 with its slf4j binding gives logs.
    # setsid: its own session, so it outlives the shell (and CI step) that started it.
    setsid java -Xms64m -Xmx256m -Dzookeeper.log.dir="$STATE_DIR" \
        -cp "$ZK_CONF_DIR:$ZK_JAR:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_CFG" \
        >>"$ZK_LOG" 2>&1 </dev/null &
    echo $! >"$ZK_PIDFILE"
}

# ---------------------------------------------------------------------------------------
# TLS: a local CA, certificates, and TLS on PostgreSQL and RabbitMQ
# ---------------------------------------------------------------------------------------

# tls_sign NAME SUBJECT EXTENSIONS: a key and a certificate NAME.{key,pem} signed by our CA.
tls_sign() {
    local name=$1 subj=$2 ext=$3
    openssl req -new -newkey rsa:2048 -nodes -subj "$subj" \
        -keyout "$TLS_DIR/$name.key" -out "$TLS_DIR/$name.csr" 2>/dev/null
    openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_CA" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile <(printf '%s\n' "$ext") \
        -out "$TLS_DIR/$name.pem" 2>/dev/null
    rm -f "$TLS_DIR/$name.csr"
}

# Make the CA and certificates once; a complete, valid set is left alone.
tls_certs() {
    if [[ -s $TLS_DIR/client.pem ]] && openssl verify -CAfile "$TLS_CA" \
        "$TLS_DIR/server.pem" "$TLS_DIR/client.pem" >/dev/null 2>&1 && [[ -s $TLS_DIR/untrusted-ca.pem ]]; then
        return 0
    fi
    need_root "creating TLS certificates in $TLS_DIR"
    command -v openssl >/dev/null || die "creating TLS certificates needs openssl (Debian openssl)"
    log "creating a local CA and server/client certificates in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj '/CN=sluice local test CA' \
        -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_CA" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 -subj '/CN=sluice untrusted CA' \
        -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS_DIR/untrusted-ca.key" -out "$TLS_DIR/untrusted-ca.pem" 2>/dev/null
    rm -f "$TLS_DIR/untrusted-ca.key"
    tls_sign server '/CN=localhost' 'basicConstraints=CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost'
    tls_sign client "/CN=$TLS_CERT_USER" 'basicConstraints=CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
    chmod 600 "$TLS_DIR/ca.key" "$TLS_DIR/server.key" "$TLS_DIR/client.key"
    chmod 644 "$TLS_CA" "$TLS_DIR/untrusted-ca.pem" "$TLS_DIR/server.pem" "$TLS_DIR/client.pem"
    # Each server reads its own copy of the key, owned by its user (PostgreSQL insists).
    rm -f "$TLS_DIR/postgresql-server.key" "$TLS_DIR/rabbitmq-server.key"
    openssl verify -CAfile "$TLS_CA" "$TLS_DIR/server.pem" "$TLS_DIR/client.pem" >/dev/null ||
        die "the certificates made in $TLS_DIR do not verify"
}

# install_key OWNER DEST: a copy of the server key that only OWNER reads.
install_key() {
    if [[ -e $2 && $(stat -c %U "$2") == "$1" ]] && cmp -s "$TLS_DIR/server.key" "$2"; then return 0; fi
    need_root "installing $2"
    install -m 600 -o "$1" -g "$1" "$TLS_DIR/server.key" "$2"
}

# The rules sluice's TLS roles need, ahead of the loopback trust rules.
pg_tls_hba() {
    echo '# sluice-services-tls: begin (scripts/services.sh) -- TLS roles, local development/CI only'
    local net
    for net in 127.0.0.1/32 ::1/128; do
        printf '%-8s%-16s%-16s%-24s%s\n' \
            host all "$PG_SCRAM_ROLE" "$net" scram-sha-256 \
            host replication "$PG_SCRAM_ROLE" "$net" scram-sha-256 \
            hostssl all "$TLS_CERT_USER" "$net" cert \
            hostssl replication "$TLS_CERT_USER" "$net" cert \
            host all "$TLS_CERT_USER" "$net" reject \
            host replication "$TLS_CERT_USER" "$net" reject
    done
    echo '# sluice-services-tls: end'
}

pg_tls_ready() {
    PGPASSWORD=$(cat "$TLS_DIR/pg-password") psql -X -w -q -At \
        "host=localhost port=$PG_PORT user=$PG_SCRAM_ROLE dbname=postgres sslmode=verify-full sslrootcert=$TLS_CA" \
        -c 'SELECT 1' >/dev/null 2>&1
}

# TLS on PostgreSQL: every setting involved is reloadable, so no restart.
pg_tls_configure() {
    install_key postgres "$TLS_DIR/postgresql-server.key"
    if [[ ! -s $TLS_DIR/pg-password ]]; then
        need_root "creating the $PG_SCRAM_ROLE password"
        (umask 077 && openssl rand -hex 16 >"$TLS_DIR/pg-password")
    fi
    local want have
    want="on $TLS_DIR/server.pem $TLS_DIR/postgresql-server.key $TLS_CA"
    have=$(pg_sql -F ' ' -c "SELECT current_setting('ssl'), current_setting('ssl_cert_file'), current_setting('ssl_key_file'), current_setting('ssl_ca_file')")
    local changed=
    if [[ $have != "$want" ]]; then
        need_root "enabling TLS on PostgreSQL"
        log "serving PostgreSQL's TLS with the certificates in $TLS_DIR (reload)"
        pg_sql -c "ALTER SYSTEM SET ssl = on" -c "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.pem'" \
            -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/postgresql-server.key'" \
            -c "ALTER SYSTEM SET ssl_ca_file = '$TLS_CA'"
        changed=1
    fi
    local role
    for role in "$PG_SCRAM_ROLE" "$TLS_CERT_USER"; do
        if [[ -z $(pg_sql -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'") ]]; then
            log "creating PostgreSQL role $role"
            pg_sql -c "CREATE ROLE $role LOGIN SUPERUSER REPLICATION"
        fi
    done
    local hba tmp
    hba=$(pg_sql -c 'SHOW hba_file')
    tmp=$(mktemp)
    { pg_tls_hba; sed '/^# sluice-services-tls: begin/,/^# sluice-services-tls: end/d' "$hba"; } >"$tmp"
    if ! cmp -s "$tmp" "$hba"; then
        need_root "adding TLS rules to $hba"
        log "adding hostssl/scram rules for $PG_SCRAM_ROLE and $TLS_CERT_USER to $hba"
        cat "$tmp" >"$hba" # keep the file's owner and mode
        changed=1
    fi
    rm -f "$tmp"
    if [[ -n $changed ]]; then pg_sql -c 'SELECT pg_reload_conf()' >/dev/null; fi
    if ! pg_tls_ready; then
        # The password file is ours: make the role's password match it.
        pg_sql -c "ALTER ROLE $PG_SCRAM_ROLE PASSWORD '$(cat "$TLS_DIR/pg-password")'" >/dev/null
        wait_until "PostgreSQL over TLS" "$PG_LOG" pg_tls_ready
    fi
}

rabbit_tls_config() {
    cat <<CONF
# sluice-services-tls: begin (scripts/services.sh) -- TLS listener and EXTERNAL, local use only
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_CA
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/rabbitmq-server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_cert_login_from = common_name
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
# sluice-services-tls: end
CONF
}

rabbit_tls_ready() { rabbit_ready && tcp_open "$AMQPS_PORT"; }

# TLS on RabbitMQ: a listener needs a node restart, done only when the config lacks it.
rabbit_tls_configure() {
    install_key rabbitmq "$TLS_DIR/rabbitmq-server.key"
    local tmp
    tmp=$(mktemp)
    { sed '/^# sluice-services-tls: begin/,/^# sluice-services-tls: end/d' "$RABBIT_CONF" 2>/dev/null || true
        rabbit_tls_config; } >"$tmp"
    local restart=
    if ! cmp -s "$tmp" "$RABBIT_CONF"; then
        need_root "adding a TLS listener to $RABBIT_CONF"
        log "adding a TLS listener on 127.0.0.1:$AMQPS_PORT and EXTERNAL to $RABBIT_CONF"
        mkdir -p "$(dirname "$RABBIT_CONF")"
        cat "$tmp" >"$RABBIT_CONF"
        restart=1
    fi
    rm -f "$tmp"
    local plugin
    for plugin in rabbitmq_auth_mechanism_ssl rabbitmq_management; do
        if ! rabbitmq-plugins -q is_enabled "$plugin" >/dev/null 2>&1; then
            need_root "enabling $plugin"
            log "enabling the RabbitMQ plugin $plugin"
            rabbitmq-plugins -q enable "$plugin" >&2 || die "enabling $plugin failed"
        fi
    done
    if [[ -n $restart ]] || ! tcp_open "$AMQPS_PORT"; then
        need_root "restarting RabbitMQ"
        local old_pid
        old_pid=$(rabbit_os_pid)
        log "restarting RabbitMQ once to open its TLS listener"
        rabbitmqctl -q shutdown >&2 || die "rabbitmqctl shutdown failed"
        rabbitmq-server -detached >&2 || die "rabbitmq-server -detached failed (logs: $RABBIT_LOG_DIR/)"
        wait_until "RabbitMQ over TLS" "$RABBIT_LOG_DIR/*.log" rabbit_tls_ready
        if [[ -n $RABBIT_STARTED || (-n $old_pid && $(cat "$STATE_DIR/rabbitmq.pid" 2>/dev/null) == "$old_pid") ]]; then
            rabbit_os_pid >"$STATE_DIR/rabbitmq.pid"
        fi
    fi
    if ! rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$TLS_CERT_USER"; then
        log "creating RabbitMQ user $TLS_CERT_USER (EXTERNAL: no password)"
        rabbitmqctl -q add_user "$TLS_CERT_USER" "$(openssl rand -hex 16)" >/dev/null
        rabbitmqctl -q clear_password "$TLS_CERT_USER" >/dev/null
        rabbitmqctl -q set_permissions -p / "$TLS_CERT_USER" '.*' '.*' '.*' >/dev/null
    fi
}

# ---------------------------------------------------------------------------------------
# Containers: podman and a local Debian base image, for the compose stack
# (docker-compose.yml + docker-compose.podman.yml, run by scripts/compose-demo.sh)
# ---------------------------------------------------------------------------------------

# Where no Docker engine and no registry can be reached, podman runs the compose stack from
# images built on a base image debootstrapped from the apt mirror. Only `podman` sets this up.
PODMAN_CONF=$STATE_DIR/containers.conf
PODMAN_BASE_IMAGE=localhost/debian:bookworm

podman_missing_packages() {
    local cmd pkg
    for pkg in podman debootstrap runc netavark aardvark-dns slirp4netns uidmap fuse-overlayfs \
        catatonit iptables nftables docker-compose podman-compose; do
        case $pkg in
            netavark) cmd=/usr/lib/podman/netavark ;;
            aardvark-dns) cmd=/usr/lib/podman/aardvark-dns ;;
            uidmap) cmd=newuidmap ;;
            catatonit) cmd=/usr/bin/catatonit ;;
            nftables) cmd=nft ;;
            *) cmd=$pkg ;;
        esac
        command -v "$cmd" >/dev/null || [[ -x $cmd ]] || echo "$pkg"
    done
}

# runc, not crun: crun fails here on cgroups in hybrid mode and on raising RLIMIT_NOFILE
# above the hard limit it was given (no CAP_SYS_RESOURCE).
podman_conf() {
    cat <<CONF
# written by sluice scripts/services.sh podman
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
}

# The first deb URI apt uses: the base image's apt reaches the same mirror.
apt_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $1; exit}')
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null)
    echo "${uri:-http://deb.debian.org/debian}"
}

# So that `FROM debian:bookworm` (and the Dockerfile's bookworm-slim) build unchanged, with
# no registry to pull them from.
podman_base_tags() {
    local tag
    for tag in docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim; do
        podman image exists "$tag" || podman tag "$PODMAN_BASE_IMAGE" "$tag"
    done
}

podman_base_image() {
    if podman image exists "$PODMAN_BASE_IMAGE"; then
        podman_base_tags
        return 0
    fi
    local mirror rootfs t0=$SECONDS
    mirror=$(apt_mirror)
    rootfs=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
    log "building the base image $PODMAN_BASE_IMAGE: debootstrap bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$STATE_DIR/debootstrap.log" 2>&1 || {
        tail -n 20 "$STATE_DIR/debootstrap.log" >&2
        rm -rf "$rootfs"
        die "debootstrap bookworm from $mirror failed (log: $STATE_DIR/debootstrap.log)"
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    if ! tar -C "$rootfs" -c . | podman import --quiet - "$PODMAN_BASE_IMAGE" >/dev/null; then
        rm -rf "$rootfs"
        die "podman import of the base image failed"
    fi
    rm -rf "$rootfs"
    podman_base_tags
    log "base image $PODMAN_BASE_IMAGE ready ($((SECONDS - t0))s)"
}

# Install podman and the compose tools, configure the runtime, build the base image; each step
# only when missing. Prints the export line the compose tools need.
cmd_podman() {
    local pkgs
    mapfile -t pkgs < <(podman_missing_packages)
    if ((${#pkgs[@]})); then
        need_root "installing ${pkgs[*]}"
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
        [[ -z $(podman_missing_packages) ]] || die "still missing after install: $(podman_missing_packages)"
    fi
    mkdir -p "$STATE_DIR"
    if podman_conf | write_if_changed "$PODMAN_CONF"; then log "wrote $PODMAN_CONF"; fi
    export CONTAINERS_CONF=$PODMAN_CONF
    podman info >/dev/null 2>&1 || die "podman does not run here: $(podman info 2>&1 | tail -n 3)"
    podman_base_image
    printf 'export CONTAINERS_CONF=%q\n' "$PODMAN_CONF"
}

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

cmd_up() {
    local t0=$SECONDS
    install_packages

    # Start everything that is not answering first (RabbitMQ boots slowest), then wait.
    rabbit_start
    etcd_start
    redis_start
    zk_start
    pg_start

    wait_until PostgreSQL "$PG_LOG" pg_ready
    pg_configure
    wait_until Redis "$REDIS_LOG" redis_ready
    if [[ -n $REDIS_STARTED ]]; then redis_os_pid >"$STATE_DIR/redis.pid"; fi
    wait_until etcd "$ETCD_LOG" etcd_check
    wait_until ZooKeeper "$ZK_LOG" zk_check
    wait_until RabbitMQ "$RABBIT_LOG_DIR/*.log" rabbit_ready
    if [[ -n $RABBIT_STARTED ]]; then rabbit_os_pid >"$STATE_DIR/rabbitmq.pid"; fi
    # TLS set-up writes server configs and keys: root only. Without root, the plain servers
    # are all `up` needs; `env` still prints the TLS URLs once root has set them up.
    if is_root; then
        tls_certs
        pg_tls_configure
        rabbit_tls_configure
    else
        log "note: not root, so the TLS set-up (certificates, TLS listeners) is left as it is"
    fi

    log "all services answering ($((SECONDS - t0))s)"
    print_env
}

cmd_status() {
    local bad=0 pg_extra=''
    pg_find_cluster || true
    if command -v pg_isready >/dev/null && pg_ready; then
        local wal slots senders
        read -r wal slots senders <<<"$(pg_settings 2>/dev/null || true)"
        pg_extra=" (cluster $PG_VER/$PG_NAME, wal_level=${wal:-?}, max_replication_slots=${slots:-?}, max_wal_senders=${senders:-?})"
        printf '%-12s up    127.0.0.1:%s%s\n' postgresql "$PG_PORT" "$pg_extra"
    else
        printf '%-12s DOWN  127.0.0.1:%s (log: %s)\n' postgresql "$PG_PORT" "${PG_LOG:-/var/log/postgresql/}"
        bad=1
    fi
    local svc port logf
    for svc in rabbitmq etcd redis zookeeper; do
        case $svc in
            rabbitmq) port=$AMQP_PORT logf="$RABBIT_LOG_DIR/" ;;
            etcd) port=$ETCD_CLIENT_PORT logf=$ETCD_LOG ;;
            redis) port=$REDIS_PORT logf=$REDIS_LOG ;;
            zookeeper) port=$ZK_PORT logf=$ZK_LOG ;;
        esac
        local ready=${svc}_ready
        [[ $svc != rabbitmq ]] || ready=rabbit_ready
        [[ $svc != zookeeper ]] || ready=zk_ready
        if "$ready"; then
            printf '%-12s up    127.0.0.1:%s\n' "$svc" "$port"
        else
            printf '%-12s DOWN  127.0.0.1:%s (log: %s)\n' "$svc" "$port" "$logf"
            bad=1
        fi
    done
    if [[ -r $TLS_DIR/pg-password ]] && pg_tls_ready; then
        printf '%-12s up    localhost:%s (verify-full, %s)\n' postgres-tls "$PG_PORT" "$PG_SCRAM_ROLE"
    else
        printf '%-12s DOWN  localhost:%s (run: %s up)\n' postgres-tls "$PG_PORT" "$0"
        bad=1
    fi
    if tcp_open "$AMQPS_PORT"; then
        printf '%-12s up    127.0.0.1:%s\n' rabbitmq-tls "$AMQPS_PORT"
    else
        printf '%-12s DOWN  127.0.0.1:%s (run: %s up)\n' rabbitmq-tls "$AMQPS_PORT" "$0"
        bad=1
    fi
    return "$bad"
}

# Stop a service only if the pid recorded when this script started it is still the
# process serving it now.
cmd_down() {
    [[ -d $STATE_DIR ]] || { log "nothing was started by this script"; return 0; }
    local pid cur

    stop_pid etcd "$(etcd_our_pid)" "$ETCD_PIDFILE"
    stop_pid ZooKeeper "$(zk_our_pid)" "$ZK_PIDFILE"

    if [[ -s $STATE_DIR/redis.pid ]]; then
        pid=$(cat "$STATE_DIR/redis.pid") cur=$(redis_os_pid)
        if [[ -n $cur && $cur == "$pid" ]]; then
            log "stopping Redis (pid $pid)"
            timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        fi
    fi
    rm -f "$STATE_DIR/redis.pid"

    if [[ -s $STATE_DIR/rabbitmq.pid ]]; then
        pid=$(cat "$STATE_DIR/rabbitmq.pid") cur=$(rabbit_os_pid)
        if [[ -n $cur && $cur == "$pid" ]]; then
            log "stopping RabbitMQ (pid $pid)"
            rabbitmqctl -q shutdown >&2 || true
        fi
    fi
    rm -f "$STATE_DIR/rabbitmq.pid"

    if [[ -s $STATE_DIR/postgresql.pid ]] && pg_find_cluster; then
        pid=$(cat "$STATE_DIR/postgresql.pid") cur=$(pg_postmaster_pid)
        if [[ -n $cur && $cur == "$pid" ]]; then
            log "stopping PostgreSQL cluster $PG_VER/$PG_NAME (pid $pid)"
            pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" stop >&2 || true
        fi
    fi
    rm -f "$STATE_DIR/postgresql.pid"
    log "down: done (services not started by this script were left alone)"
}

main() {
    # up/down/podman: one at a time per machine (two checkouts running tests at once). flock -o
    # keeps the lock's fd out of the servers we start, so they do not hold the lock.
    if [[ ${1:-} == up || ${1:-} == down || ${1:-} == podman ]] && [[ -z ${SLUICE_SERVICES_LOCKED:-} ]] &&
        command -v flock >/dev/null && mkdir -p "$STATE_DIR" 2>/dev/null; then
        SLUICE_SERVICES_LOCKED=1 exec flock -o -w "$TIMEOUT" -E 75 "$STATE_DIR/lock" "$BASH" "${BASH_SOURCE[0]}" "$@"
    fi
    case ${1:-} in
        up) cmd_up ;;
        env) print_env ;;
        status) cmd_status ;;
        down) cmd_down ;;
        podman) cmd_podman ;;
        *)
            echo "usage: $0 up|down|status|env|podman" >&2
            exit 2
            ;;
    esac
}

# Sourcing the file (e.g. to test single functions) defines the functions only.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
