#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and benchmarks, in a directory of its own.
#
#   scripts/postgres.sh start DIR [--durable]   initdb + start; prints the server's URL
#   scripts/postgres.sh restart DIR             stop (fast) and start again, same port
#   scripts/postgres.sh stop DIR                stop and delete DIR
#
# Installs Debian's postgresql when no initdb is found. PostgreSQL refuses to run as
# root, so as root the cluster belongs to the `postgres` user (or `nobody`). It listens
# on 127.0.0.1 only, on a free port, with trust authentication for user `wasmesh`.
# Without --durable, fsync is off (a test server's data dies with it anyway).
set -euo pipefail

cmd=${1:?usage: postgres.sh start|restart|stop DIR}
dir=${2:?usage: postgres.sh start|restart|stop DIR}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "==> installing postgresql (the PostgreSQL journal's tests)" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    local owner=postgres
    id postgres >/dev/null 2>&1 || owner=nobody
    runuser -u "$owner" -- "$@"
  else
    "$@"
  fi
}

start() {
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

case "$cmd" in
  start)
    durable=${3:-}
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
      owner=postgres
      id postgres >/dev/null 2>&1 || owner=nobody
      chown "$owner" "$dir"
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U wasmesh --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = ''"
      echo "max_connections = 400"
      if [ "$durable" != "--durable" ]; then
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    start
    echo "postgres://wasmesh@127.0.0.1:$port/postgres"
    ;;
  restart)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    start
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: postgres.sh start|restart|stop DIR" >&2
    exit 2
    ;;
esac
