#!/bin/sh
# Role dispatcher for the cxr-orient image. First argument picks the role:
#   worker [celery args]   celery -A worker worker (default)
#   beat [celery args]     celery -A worker beat (the periodic reaper)
#   retrain-loop [HH:MM]   nightly `cxr-orient retrain` at HH:MM (container clock, UTC)
#   cxr-orient ...         the CLI (db upgrade, enqueue, status, results, requeue)
#   anything else          run as given
set -eu

role="${1:-worker}"
[ "$#" -gt 0 ] && shift

case "$role" in
  worker)
    # One prefork child per WORKER_CONCURRENCY; each loads the model once after fork.
    # The node name must be unique per container: on host networking every container
    # has the host's name, so a random suffix is added. The healthcheck reads it back.
    node="worker-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')@$(uname -n)"
    printf '%s\n' "$node" > "${TMPDIR:-/tmp}/cxr-celery-node"
    exec celery -A worker worker \
      --loglevel "${CXR_LOG_LEVEL:-INFO}" \
      --concurrency "${WORKER_CONCURRENCY:-1}" \
      --hostname "$node" \
      "$@"
    ;;
  beat)
    # The schedule file must be writable by the unprivileged user.
    exec celery -A worker beat \
      --loglevel "${CXR_LOG_LEVEL:-INFO}" \
      --schedule "${CXR_DATA_DIR:-/var/lib/cxr-orient}/celerybeat-schedule" \
      "$@"
    ;;
  retrain-loop)
    exec /usr/local/bin/cxr-retrain-loop "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
