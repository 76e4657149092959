#!/usr/bin/env bash
# Private test services on loopback: RabbitMQ and PostgreSQL, plus the Chromium that
# browser tests use. Nothing here touches the system-wide rabbitmq-server / postgresql
# services: every instance has its own node name, free ports, folders and processes,
# all under one state folder.
#
#   scripts/services.sh start     # install what is missing (as root), start both
#   scripts/services.sh env       # print `export` lines for the tests; eval them
#   scripts/services.sh status    # exit 0 when both answer
#   scripts/services.sh stop      # stop them and remove the state folder
#   scripts/services.sh install   # only install the Debian packages
#   scripts/services.sh rabbitmqctl ARGS...   # rabbitmqctl against our node
#
# Environment:
#   AGATA_SERVICES_DIR   state folder (default /tmp/agata-services-$UID). Use a folder of
#                        your own to run several independent sets side by side
#                        (scripts/test.sh does, so parallel test runs never collide).
#   AGATA_KEEP_SERVICES_DIR=1   `stop` keeps the folder (logs, data) instead of removing it
#
# The variables printed by `env`:
#   AGATA_TEST_AMQP_URL   amqp://agata:agata@127.0.0.1:PORT/   (user agata, all rights on /)
#   AGATA_TEST_PG_URL     postgresql://agata@127.0.0.1:PORT/postgres   (trust auth)
#   AGATA_TEST_CHROMIUM   /usr/bin/chromium
#   AGATA_TEST_RABBITMQCTL   a command line running rabbitmqctl against that broker
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export LC_ALL=C.UTF-8 LANG=C.UTF-8

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
STATE="${AGATA_SERVICES_DIR:-/tmp/agata-services-$(id -u)}"
STATE="${STATE%/}"
RMQ_DIR="$STATE/rabbitmq"
PG_DIR="$STATE/postgres"
ENV_FILE="$STATE/env.sh"
INFO_FILE="$STATE/info.sh"
CHROMIUM=/usr/bin/chromium
APT_PACKAGES=(rabbitmq-server postgresql chromium chromium-driver wrk)
# Every process we start carries this variable; `stop` finds leftovers by it.
OWNER_VAR=AGATA_SERVICES_OWNER

say() { printf 'services: %s\n' "$*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------
# Debian packages

pg_bindir() {
    # Newest installed PostgreSQL server binaries (Debian 12: 15).
    local d
    d="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

missing_packages() {
    local missing=()
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    pg_bindir >/dev/null || missing+=(postgresql)
    [ -x "$CHROMIUM" ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    echo "${missing[@]}"
}

port_listening() {
    # True when something accepts TCP connections on 127.0.0.1:$1.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

install_packages() {
    local missing
    missing="$(missing_packages)"
    [ -z "$missing" ] && return 0
    if ! is_root; then
        say "missing Debian packages: $missing"
        say "install them once with:"
        say "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}"
        exit 1
    fi
    say "installing Debian packages: $missing (apt-get, a minute or two) ..."
    local had_rmq=0 had_pg=0 made_policy=0 log="$STATE/apt.log"
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && had_rmq=1
    pg_bindir >/dev/null && had_pg=1
    # Keep the packages' own services (rabbitmq on 5672, postgres "main" on 5432) from
    # starting: invoke-rc.d asks /usr/sbin/policy-rc.d, and 101 means "not now".
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, written by agata scripts/services.sh\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update &&
            apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
                "${APT_PACKAGES[@]}"
    } >"$log" 2>&1 || rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$log" >&2
        die "apt-get failed (full log: $log)"
    fi
    # Belt and braces: if the system-wide services came up anyway (systemd, or a
    # policy-rc.d that allows it), stop them. Ours use other ports, but idle system
    # brokers listening on every interface are not wanted on a test machine.
    if [ "$had_rmq" = 0 ] && port_listening 5672; then
        say "stopping the system-wide rabbitmq-server that the package started"
        if [ -d /run/systemd/system ]; then
            systemctl stop rabbitmq-server >/dev/null 2>&1 || true
        else
            service rabbitmq-server stop >/dev/null 2>&1 || true
        fi
    fi
    if [ "$had_pg" = 0 ] && command -v pg_lsclusters >/dev/null 2>&1; then
        local ver name _
        while read -r ver name _; do
            say "stopping the system-wide PostgreSQL cluster $ver/$name that the package started"
            pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        done < <(pg_lsclusters -h 2>/dev/null | awk '$4 == "online"')
    fi
    missing="$(missing_packages)"
    [ -z "$missing" ] || die "still missing after apt-get: $missing"
}

# ---------------------------------------------------------------------------------------
# helpers

free_ports() {
    # Print $1 distinct ports that are free on 127.0.0.1, from 20000-29999: below the
    # kernel's ephemeral range (32768-60999), so no outgoing connection takes one before
    # the server binds it.
    python3 - "$1" <<'PY'
import random, socket, sys
want, found = int(sys.argv[1]), []
cands = list(range(20000, 30000))
random.shuffle(cands)
for port in cands:
    if len(found) == want:
        break
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
    except OSError:
        continue
    found.append(port)
print(" ".join(map(str, found)))
PY
}

pids_of_owner() {
    # PIDs of processes whose environment holds OWNER_VAR=$STATE (our services and
    # everything they spawned: beam.smp, epmd, erl_child_setup, postgres workers).
    local f pid
    for f in /proc/[0-9]*/environ; do
        pid="${f#/proc/}"
        pid="${pid%/environ}"
        [ "$pid" = "$$" ] && continue
        # (Processes of other users or PID namespaces cannot be read: skipped.)
        if { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF "$OWNER_VAR=$STATE"; then
            echo "$pid"
        fi
    done
}

as_user() {
    # Run a command as $1 (root) or as ourselves (anyone else), keeping the environment.
    local user="$1"
    shift
    if is_root; then
        runuser -u "$user" -m -- "$@"
    else
        "$@"
    fi
}

load_info() {
    # shellcheck disable=SC1090
    [ -f "$INFO_FILE" ] && . "$INFO_FILE"
    return 0
}

# ---------------------------------------------------------------------------------------
# RabbitMQ

rmq_env() {
    # The environment of our node, for the server and for every CLI call.
    export RABBITMQ_NODENAME="$RMQ_NODE"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$RMQ_PORT"
    export RABBITMQ_DIST_PORT="$RMQ_DIST_PORT"
    export RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$RMQ_DIR/log"
    export RABBITMQ_PID_FILE="$RMQ_DIR/pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
    export RABBITMQ_FEATURE_FLAGS_FILE="$RMQ_DIR/feature_flags"
    export RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
    export RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
    # Erlang distribution on loopback too: our own epmd on a port of ours, and the node's
    # (and the CLI tools') distribution listeners bound to 127.0.0.1 — ERL_EPMD_ADDRESS
    # alone leaves the distribution port on every interface.
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT="$RMQ_EPMD_PORT"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rmq_cli() {
    # rabbitmqctl / rabbitmq-diagnostics against our node (as the rabbitmq user, so the
    # Erlang cookie matches), never hanging for more than 30 s.
    local tool="$1"
    shift
    (
        rmq_env
        if is_root; then
            cd /var/lib/rabbitmq
            timeout -k 5 30 runuser -u rabbitmq -m -- env HOME=/var/lib/rabbitmq \
                "/usr/lib/rabbitmq/bin/$tool" -n "$RMQ_NODE" "$@"
        else
            timeout -k 5 30 "/usr/lib/rabbitmq/bin/$tool" -n "$RMQ_NODE" "$@"
        fi
    )
}

rmq_launch() {
    mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
    echo '[].' >"$RMQ_DIR/enabled_plugins"
    : >"$RMQ_DIR/rabbitmq-env.conf"
    echo '[].' >"$RMQ_DIR/advanced.config"
    cat >"$RMQ_DIR/rabbitmq.conf" <<CONF
# written by agata scripts/services.sh; a private test node
listeners.tcp.default = 127.0.0.1:$RMQ_PORT
loopback_users.guest = true
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
CONF
    if is_root; then
        chown -R rabbitmq:rabbitmq "$RMQ_DIR"
    fi
    (
        rmq_env
        export "$OWNER_VAR=$STATE"
        if is_root; then
            cd /var/lib/rabbitmq
            exec setsid runuser -u rabbitmq -m -- env HOME=/var/lib/rabbitmq \
                /usr/lib/rabbitmq/bin/rabbitmq-server
        else
            exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server
        fi
    ) </dev/null >"$RMQ_DIR/out.log" 2>&1 &
    RMQ_LAUNCHER=$!
}

rmq_wait() {
    # The AMQP port opens at the end of the boot; poll it cheaply, then confirm with
    # `rabbitmq-diagnostics ping` (each CLI call starts an Erlang VM, ~1 s).
    local deadline=$((SECONDS + 60))
    until port_listening "$RMQ_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "RabbitMQ did not open port $RMQ_PORT within 60 s; its output:"
            tail -n 30 "$RMQ_DIR/out.log" >&2 || true
            return 1
        fi
        if ! kill -0 "$RMQ_LAUNCHER" 2>/dev/null; then
            say "RabbitMQ exited during boot; its output:"
            tail -n 30 "$RMQ_DIR/out.log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    rmq_cli rabbitmq-diagnostics -q ping >/dev/null || {
        say "rabbitmq-diagnostics ping failed"
        return 1
    }
}

pids_of_owner_kind() {
    # Our PIDs whose command name starts with $1 (e.g. beam, epmd, postgres).
    local pid
    for pid in $(pids_of_owner); do
        case "$(cat "/proc/$pid/comm" 2>/dev/null)" in "$1"*) echo "$pid" ;; esac
    done
}

rmq_setup_user() {
    # A dedicated user (tests use it instead of guest), all rights on vhost /.
    rmq_cli rabbitmqctl -q add_user agata agata >/dev/null
    rmq_cli rabbitmqctl -q set_permissions -p / agata '.*' '.*' '.*' >/dev/null
}

rmq_stop() {
    [ -n "${RMQ_NODE:-}" ] || return 0
    if [ -n "$(pids_of_owner_kind beam)" ]; then
        rmq_cli rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------------------------------
# PostgreSQL

pg_start() {
    local bin
    bin="$(pg_bindir)" || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    mkdir -p "$PG_DIR"
    if is_root; then
        chown postgres:postgres "$PG_DIR"
    fi
    (
        cd "$PG_DIR"
        export "$OWNER_VAR=$STATE"
        as_user postgres "$bin/initdb" -D "$PG_DIR/data" -A trust -U agata -E UTF8 \
            --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1 || {
            cat "$PG_DIR/initdb.log" >&2
            exit 1
        }
        # Test settings: loopback only, socket in our folder, no fsync (throwaway data).
        as_user postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
            -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off \
-c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start >"$PG_DIR/pg_ctl.log" 2>&1 || {
            cat "$PG_DIR/pg_ctl.log" >&2
            tail -n 20 "$PG_DIR/server.log" >&2 || true
            exit 1
        }
    )
}

pg_stop() {
    local bin
    [ -f "$PG_DIR/data/postmaster.pid" ] || return 0
    bin="$(pg_bindir)" || return 0
    (cd "$PG_DIR" && as_user postgres "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop) \
        >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------
# commands

services_alive() {
    load_info
    [ -n "${RMQ_PORT:-}" ] && [ -n "${PG_PORT:-}" ] || return 1
    port_listening "$RMQ_PORT" && port_listening "$PG_PORT"
}

cmd_start() {
    if [ -f "$ENV_FILE" ] && services_alive; then
        say "already running (state in $STATE); \`$0 stop\` first to restart"
        return 0
    fi
    # Leftovers of a half-started or crashed earlier run in the same folder.
    if [ -d "$STATE" ]; then
        cmd_stop quiet
    fi
    mkdir -p "$STATE"
    chmod 755 "$STATE" # the rabbitmq and postgres users must reach their folders
    install_packages

    local started=$SECONDS pg_rc=0
    read -r RMQ_PORT RMQ_DIST_PORT RMQ_EPMD_PORT PG_PORT <<<"$(free_ports 4)"
    [ -n "$PG_PORT" ] || die "could not find 4 free ports on 127.0.0.1"
    RMQ_NODE="agata-test-$RMQ_PORT@localhost"
    # Written before anything starts, so that `stop` can clean up a half-started set.
    cat >"$INFO_FILE" <<INFO
RMQ_NODE='$RMQ_NODE'
RMQ_PORT='$RMQ_PORT'
RMQ_DIST_PORT='$RMQ_DIST_PORT'
RMQ_EPMD_PORT='$RMQ_EPMD_PORT'
PG_PORT='$PG_PORT'
INFO

    # RabbitMQ boots in the background while PostgreSQL starts.
    rmq_launch
    pg_start || pg_rc=$?
    if [ "$pg_rc" -ne 0 ]; then
        say "PostgreSQL failed to start"
        cmd_stop quiet
        exit 1
    fi
    if ! rmq_wait || ! rmq_setup_user; then
        say "RabbitMQ failed to start (logs in $RMQ_DIR)"
        AGATA_KEEP_SERVICES_DIR=1 cmd_stop quiet
        exit 1
    fi

    cat >"$ENV_FILE" <<ENV
export AGATA_TEST_AMQP_URL='amqp://agata:agata@127.0.0.1:$RMQ_PORT/'
export AGATA_TEST_PG_URL='postgresql://agata@127.0.0.1:$PG_PORT/postgres'
export AGATA_TEST_CHROMIUM='$CHROMIUM'
export AGATA_TEST_RABBITMQCTL='env AGATA_SERVICES_DIR=$STATE bash $SCRIPT rabbitmqctl'
ENV
    say "RabbitMQ $RMQ_NODE on 127.0.0.1:$RMQ_PORT, PostgreSQL on 127.0.0.1:$PG_PORT" \
        "(started in $((SECONDS - started)) s; state in $STATE)"
}

cmd_env() {
    if [ ! -f "$ENV_FILE" ] || ! services_alive; then
        die "services are not running (state folder $STATE); run \`$0 start\` first"
    fi
    cat "$ENV_FILE"
}

cmd_status() {
    if [ -f "$ENV_FILE" ] && services_alive; then
        say "running: RabbitMQ 127.0.0.1:$RMQ_PORT ($RMQ_NODE), PostgreSQL 127.0.0.1:$PG_PORT"
        return 0
    fi
    say "not running (state folder $STATE)"
    return 1
}

cmd_stop() {
    local quiet="${1:-}"
    if [ ! -d "$STATE" ]; then
        [ -n "$quiet" ] || say "nothing to stop ($STATE does not exist)"
        return 0
    fi
    load_info
    # Graceful first, both at once.
    rmq_stop &
    local rmq_job=$!
    pg_stop
    wait "$rmq_job" 2>/dev/null || true
    # Then whatever of ours is left: the beam, our private epmd, postgres children.
    local pids
    pids="$(pids_of_owner)"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for _ in $(seq 50); do
            pids="$(pids_of_owner)"
            [ -z "$pids" ] && break
            sleep 0.1
        done
        if [ -n "$pids" ]; then
            say "killing leftover processes: $pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$ENV_FILE"
    if [ "${AGATA_KEEP_SERVICES_DIR:-0}" = 1 ]; then
        [ -n "$quiet" ] || say "stopped; kept $STATE"
    else
        rm -rf "$STATE"
        [ -n "$quiet" ] || say "stopped; removed $STATE"
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop)
    # A stop must finish even when the caller's whole process group is being signalled
    # (Ctrl-C, a CI timeout): a half-done stop leaves a broker behind.
    trap '' INT TERM HUP
    cmd_stop
    ;;
env) cmd_env ;;
status) cmd_status ;;
install)
    mkdir -p "$STATE"
    install_packages
    ;;
rabbitmqctl)
    # rabbitmqctl against our node, e.g. `agata bench scaling --rabbitmqctl
    # "bash scripts/services.sh rabbitmqctl"` (it reads the broker's message counters).
    shift
    load_info
    [ -n "${RMQ_NODE:-}" ] || die "no services in $STATE: \`$0 start\` first"
    rmq_cli rabbitmqctl "$@"
    ;;
*)
    echo "usage: $0 start|stop|env|status|install|rabbitmqctl ARGS..." >&2
    exit 2
    ;;
esac
