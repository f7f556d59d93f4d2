#!/bin/sh
# Nightly retrain without cron: sleep until the next HH:MM (container clock,
# UTC unless TZ is set), run `cxr-orient retrain`, repeat. A failed run is
# logged and the loop goes on to the next night; `cxr-orient retrain` itself
# decides whether the new model is promoted (only a better one is).
#
#   cxr-retrain-loop [HH:MM]     default 02:15
set -eu

at="${1:-02:15}"
case "$at" in
  [0-2][0-9]:[0-5][0-9]) ;;
  *) echo "cxr-retrain-loop: expected HH:MM, got '$at'" >&2; exit 2 ;;
esac

while :; do
  now=$(date +%s)
  next=$(date -d "today $at" +%s)
  [ "$next" -le "$now" ] && next=$(date -d "tomorrow $at" +%s)
  echo "cxr-retrain-loop: next retrain at $(date -d "@$next" '+%Y-%m-%d %H:%M %Z')"
  sleep $((next - now))
  started=$(date +%s)
  if cxr-orient retrain; then
    echo "cxr-retrain-loop: retrain finished in $(( $(date +%s) - started )) s"
  else
    echo "cxr-retrain-loop: retrain failed with status $? (next attempt tomorrow)" >&2
  fi
done
