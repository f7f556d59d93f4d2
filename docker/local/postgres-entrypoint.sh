#!/bin/sh
# First start on an empty $PGDATA: initdb with POSTGRES_USER as the superuser and
# POSTGRES_PASSWORD (required), scram-sha-256 for TCP, then create POSTGRES_DB in
# single-user mode (no server is started for it). Then exec the command.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"

if [ "${1:-postgres}" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD is required" >&2
    exit 2
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata "$PGDATA" --username "$user" --pwfile "$pwfile" \
    --auth-local trust --auth-host scram-sha-256 --encoding UTF8 --no-instructions >/dev/null
  rm -f "$pwfile"
  if [ "$db" != "postgres" ]; then
    printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$db" "$user" \
      | postgres --single -j -D "$PGDATA" postgres >/dev/null
  fi
  echo "postgres-entrypoint: initialised $PGDATA (user $user, database $db)"
fi

exec "$@"
