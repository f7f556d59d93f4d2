#!/usr/bin/env bash
# Compose smoke run: build the images, run docker/compose.yaml (migrate, worker, beat,
# serve, listen) on host networking, send the bundled demo samples three ways (folder
# enqueue, C-STORE to listen, STOW-RS to serve), read the results back, tear down.
# Exit 0 only if every step passed; 77 if no Docker engine runs or can be started here.
# docs/deployment.md describes it and its times.
#
#   scripts/compose-smoke.sh            # as root, on a machine with dockerd + debootstrap
#
# No image registry is needed: the base image is made by debootstrap (bookworm, from the
# Debian mirror apt already uses), imported as cxr-base:bookworm, and Redis and PostgreSQL
# come from Debian's packages on it (docker/local/). The debootstrap tarball is cached,
# images are reused, pip's downloads stay in BuildKit's cache: a second run is fast.
#
# Inputs (environment), all optional:
#   SMOKE_CACHE_DIR     tarball cache (default ~/.cache/cxr-orient)
#   DEBIAN_MIRROR       debootstrap mirror (default: the one in apt's sources)
#   SMOKE_REDIS_PORT, SMOKE_POSTGRES_PORT, SMOKE_HTTP_PORT, SMOKE_DICOM_PORT
#                       host ports (defaults 16379, 15432, 18080, 11113; host networking,
#                       so they must be free on this machine)
#   SMOKE_REBUILD_BASE=1  debootstrap again even if the tarball is cached
#   SMOKE_TIMEOUT_S     longest wait for any one phase (default 300)
#   SMOKE_KEEP_DOCKERD=1  leave a dockerd this script started running
#   SMOKE_PIP_CA        CA bundle pip trusts in the build (default $PIP_CERT, $SSL_CERT_FILE
#                       or /etc/ssl/certs/ca-certificates.crt), passed as the secret pip_ca
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole script is one { } group, read completely before it runs: editing or
# checking out another version of this file during a run cannot change the run.
{
ROOT=$PWD

CACHE_DIR=${SMOKE_CACHE_DIR:-$HOME/.cache/cxr-orient}
REDIS_PORT=${SMOKE_REDIS_PORT:-16379}
POSTGRES_PORT=${SMOKE_POSTGRES_PORT:-15432}
HTTP_PORT=${SMOKE_HTTP_PORT:-18080}
DICOM_PORT=${SMOKE_DICOM_PORT:-11113}
TIMEOUT_S=${SMOKE_TIMEOUT_S:-300}
BASE_TAG=cxr-base:bookworm
REDIS_TAG=cxr-redis:bookworm
POSTGRES_TAG=cxr-postgres:bookworm
APP_TAG=cxr-orient:smoke
PROJECT=cxr-orient-smoke
SAMPLES=$ROOT/cxr_orient/samples

log() { printf '[compose-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# --- timings ------------------------------------------------------------------------
declare -a PHASES=()
T0=$(date +%s.%N)
phase_start=$T0
phase() {  # phase NAME: close the running phase under NAME
  local now; now=$(date +%s.%N)
  PHASES+=("$(printf '%-22s %7.1f s' "$1" "$(awk "BEGIN { print $now - $phase_start }")")")
  phase_start=$now
}
print_timings() {
  log "timings:"
  local line
  for line in "${PHASES[@]}"; do printf '  %s\n' "$line" >&2; done
  printf '  %-22s %7.1f s\n' total "$(awk "BEGIN { print $(date +%s.%N) - $T0 }")" >&2
}

# --- the docker CLI and compose -----------------------------------------------------
# BuildKit is needed (RUN --mount, COPY --chmod). A CLI with buildx, or Debian's 20.10
# CLI (BuildKit built in, DOCKER_BUILDKIT=1), both work; a newer CLI without buildx
# does not, so Debian's is preferred when the first docker on PATH lacks buildx.
DOCKER=${DOCKER:-docker}
if ! $DOCKER buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
  DOCKER=/usr/bin/docker
fi
export DOCKER_BUILDKIT=1
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
fi

WORK=$(mktemp -d /tmp/cxr-compose-smoke.XXXXXX)
STARTED_DOCKERD=""
COMPOSE_UP=""
compose() {
  "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker/compose.yaml" "$@"
}
cleanup() {
  local status=$?
  set +e
  if [ -n "$COMPOSE_UP" ]; then
    if [ "$status" -ne 0 ]; then
      log "logs of the failed run (last 40 lines per service):"
      compose logs --no-color --tail 40 >&2 2>&1
    fi
    log "tearing down (compose down -v)"
    compose down -v --remove-orphans >/dev/null 2>&1
  fi
  # An interrupted debootstrap may leave /proc and /sys mounted in the rootfs.
  findmnt -rno TARGET | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l
  rm -rf "$WORK"
  if [ -n "$STARTED_DOCKERD" ] && [ -z "${SMOKE_KEEP_DOCKERD:-}" ]; then
    log "stopping the dockerd this run started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD"
    for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
  fi
  [ "${#PHASES[@]}" -gt 0 ] && print_timings
  case $status in
    0) log "PASSED" ;;
    77) log "SKIPPED: no Docker engine here" ;;
    *) log "FAILED (status $status)" ;;
  esac
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the engine ------------------------------------------------------------------
# No Docker bridge network on these machines: --bridge=none, no iptables, no forwarding;
# every container runs on the host's network (compose: network_mode: host).
# Exit status 77: no engine runs and none could be started (CI counts that as skipped).
if ! $DOCKER info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { log "no Docker engine and no dockerd to start"; exit 77; }
  log "starting dockerd (--bridge=none --iptables=false --ip-forward=false)"
  DOCKERD_LOG=${SMOKE_DOCKERD_LOG:-/tmp/cxr-compose-smoke-dockerd.log}
  dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false > "$DOCKERD_LOG" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  if ! $DOCKER info >/dev/null 2>&1; then
    tail -5 "$DOCKERD_LOG" >&2
    log "dockerd did not start within 30 s (log: $DOCKERD_LOG)"
    exit 77
  fi
  # The engine this run started has no bridge network (only host and none).
  ! $DOCKER network ls --format '{{.Driver}}' | grep -qx bridge || fail "dockerd made a bridge network"
fi
[ "${#COMPOSE[@]}" -gt 0 ] || fail "neither 'docker compose' nor docker-compose is installed"
command -v dcmsend >/dev/null || fail "dcmsend (dcmtk) is needed to send to listen"
phase engine

# --- 2. the base image (debootstrap, cached) ----------------------------------------
debian_mirror() {
  # The first Debian (not -security) mirror apt on this machine uses.
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
          2>/dev/null | grep -oE '(https?)://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')
  echo "${uri:-http://deb.debian.org/debian}"
}
if ! $DOCKER image inspect "$BASE_TAG" >/dev/null 2>&1; then
  mkdir -p "$CACHE_DIR"
  tarball=$CACHE_DIR/bookworm-base.tar
  if [ ! -s "$tarball" ] || [ -n "${SMOKE_REBUILD_BASE:-}" ]; then
    command -v debootstrap >/dev/null || fail "debootstrap is needed for the base image"
    mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
    log "debootstrap bookworm from $mirror (python3.11, venv; once, then cached in $tarball)"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
      bookworm "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
      > "$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing $tarball as $BASE_TAG"
  $DOCKER import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    "$tarball" "$BASE_TAG" >/dev/null
fi
phase base-image

# --- 3. images ----------------------------------------------------------------------
# pip inside the build trusts the CA bundle this machine trusts (an intercepting proxy's
# CA included), handed in as a build secret: never written into an image layer.
PIP_CA=${SMOKE_PIP_CA:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
secret=()
[ -s "$PIP_CA" ] && secret=(--secret "id=pip_ca,src=$PIP_CA")
build() {  # build TAG DOCKERFILE CONTEXT
  log "building $1"
  $DOCKER build --progress plain --network host --build-arg "BASE_IMAGE=$BASE_TAG" "${secret[@]}" \
    -t "$1" -f "$2" "$3" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; fail "docker build $1"; }
}
build "$REDIS_TAG" docker/local/Dockerfile.redis docker/local
build "$POSTGRES_TAG" docker/local/Dockerfile.postgres docker/local
phase build-redis+postgres
build "$APP_TAG" docker/Dockerfile .
phase build-app

# --- 4. compose up ------------------------------------------------------------------
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
for port in "$REDIS_PORT" "$POSTGRES_PORT" "$HTTP_PORT" "$DICOM_PORT"; do
  port_free "$port" || fail "port $port is taken on this host (host networking); set SMOKE_*_PORT"
done
ARCHIVE=$WORK/archive
mkdir -p "$ARCHIVE"
cp -r "$SAMPLES/study1" "$SAMPLES/rg1" "$SAMPLES/broken" "$ARCHIVE/"
chmod -R a+rX "$WORK"  # the app runs as uid 10001 in the containers
export APP_IMAGE=$APP_TAG BASE_IMAGE=$BASE_TAG REDIS_IMAGE=$REDIS_TAG POSTGRES_IMAGE=$POSTGRES_TAG
export REDIS_PORT POSTGRES_PORT CXR_HTTP_PORT=$HTTP_PORT CXR_DICOM_PORT=$DICOM_PORT
export ARCHIVE_DIR=$ARCHIVE POSTGRES_PASSWORD="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# Network studies are released 2 s after their last instance (default 10).
export CXR_STUDY_QUIET_S=2
compose down -v --remove-orphans >/dev/null 2>&1 || true  # leftovers of an aborted run
COMPOSE_UP=1
log "compose up: migrate, worker, beat, serve, listen (redis :$REDIS_PORT, postgres :$POSTGRES_PORT)"
compose up -d --no-build migrate worker beat serve listen > "$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log" >&2; fail "compose up"; }
phase compose-up

declare -A CONTAINERS=()
# One call for every container id (docker exec is much faster than compose exec).
while read -r svc id; do CONTAINERS[$svc]=$id; done < <(
  $DOCKER ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --format '{{.Label "com.docker.compose.service"}} {{.ID}}')
for svc in migrate worker beat serve listen postgres redis; do
  [ -n "${CONTAINERS[$svc]:-}" ] || fail "no container for $svc"
done
in_service() { local svc=$1; shift; $DOCKER exec -i "${CONTAINERS[$svc]}" "$@"; }
state() {
  $DOCKER inspect -f '{{.State.Status}} {{.State.ExitCode}}{{if .State.Health}} {{.State.Health.Status}}{{end}}' \
    "${CONTAINERS[$1]}"
}
wait_until() {  # wait_until WHAT COMMAND...: retry COMMAND until it succeeds or TIMEOUT_S
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 1
  done
}
[ "$(state migrate)" = "exited 0" ] || fail "migrate: $(state migrate)"
# Every container is on the host's network, none on a Docker network.
modes=$($DOCKER inspect -f '{{.HostConfig.NetworkMode}}' "${CONTAINERS[@]}" | sort -u)
[ "$modes" = host ] || fail "containers not on the host network: $modes"
healthy() { [ "$(state "$1")" = "running 0 healthy" ]; }

# --- 5. send the demo samples -------------------------------------------------------
# Each way in is used as soon as it can take them, side by side (the work is mostly
# Python start-up, which the services' own start-up competes with):
#   study1, rg1, broken: `cxr-orient enqueue` in the worker container (paths under
#     /ingest); the broker holds the messages until the worker is up
#   study2: C-STORE to listen (dcmtk's dcmsend) once listen answers a C-ECHO
#   study3: STOW-RS to serve, with a bearer token from `cxr-orient token create`
# and the worker's own healthcheck command (a celery ping of its node) must answer.
log "enqueue /ingest/archive (study1, rg1, broken) in the worker container"
in_service worker cxr-orient enqueue /ingest/archive > "$WORK/enqueue.log" 2>&1 &
enqueue_pid=$!
in_service serve cxr-orient token create compose-smoke > "$WORK/token" 2> "$WORK/token.log" &
token_pid=$!
worker_answers() {
  in_service worker sh -c 'celery -A worker inspect ping --timeout 5 --destination "$(cat /tmp/cxr-celery-node)"'
}
( wait_until "the worker to answer its healthcheck ping" worker_answers
  log "worker answers its healthcheck ping" ) &
ping_pid=$!

wait_until "listen to be healthy (C-ECHO)" healthy listen
log "listen healthy; C-STORE study2 (dcmsend to 127.0.0.1:$DICOM_PORT)"
dcmsend -aec CXR_ORIENT 127.0.0.1 "$DICOM_PORT" "$SAMPLES"/study2/*.dcm > "$WORK/dcmsend.log" 2>&1 \
  || { cat "$WORK/dcmsend.log" >&2; fail "dcmsend to listen"; }
wait_until "serve to be healthy (/readyz)" healthy serve
wait "$token_pid" || { cat "$WORK/token.log" >&2; fail "cxr-orient token create"; }
token=$(tail -1 "$WORK/token")
log "serve healthy; STOW-RS study3 (127.0.0.1:$HTTP_PORT)"
python3 - "$HTTP_PORT" "$token" "$SAMPLES"/study3/*.dcm <<'PY' || fail "STOW-RS to serve"
import sys, urllib.request, uuid
port, token, files = sys.argv[1], sys.argv[2], sys.argv[3:]
boundary = uuid.uuid4().hex
body = b"".join(
    b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
    + open(f, "rb").read() + b"\r\n" for f in files) + b"--" + boundary.encode() + b"--\r\n"
request = urllib.request.Request(
    f"http://127.0.0.1:{port}/dicom-web/studies", data=body, method="POST",
    headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
             "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
with urllib.request.urlopen(request, timeout=60) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
wait "$enqueue_pid" || { cat "$WORK/enqueue.log" >&2; fail "cxr-orient enqueue"; }
log "enqueue: $(tail -1 "$WORK/enqueue.log")"
phase services-up+send

# --- 6. results ---------------------------------------------------------------------
# Polled in SQL (psql in the postgres container, over its Unix socket: no Python start
# per poll), then read
# once with `cxr-orient results --format json` and checked.
finished() {
  [ "$(in_service postgres psql -qAt -U cxr -d cxr -c \
        "SELECT count(*) FROM instances WHERE status IN ('done', 'failed')")" = 8 ]
}
wait_until "8 finished instances" finished
wait "$ping_pid" || fail "the worker's healthcheck ping"
phase classify

in_service serve cxr-orient results --format json > "$WORK/results.json" 2> "$WORK/results.log" \
  || { cat "$WORK/results.log" >&2; fail "cxr-orient results"; }
python3 - "$WORK/results.json" <<'PY' || fail "the results are not what the samples are"
import json, sys
rows = json.load(open(sys.argv[1]))
done = [r for r in rows if r["status"] == "done"]
failed = [r for r in rows if r["status"] == "failed"]
problems = []
if len(done) != 7 or len(failed) != 1:
    problems.append(f"{len(done)} done and {len(failed)} failed, expected 7 and 1")
for r in failed:
    if not r["file_path"].endswith("broken/truncated.dcm") or not r["error"]:
        problems.append(f"unexpected failure: {r['file_path']}: {r['error']}")
labels = sorted(r["label"] for r in done)
if labels != ["frontal"] * 4 + ["lateral"] * 3:
    problems.append(f"labels {labels}, expected 4 frontal and 3 lateral")
for r in done:
    name = r["file_path"].rsplit("/", 1)[-1]
    if "/ingest/archive/" in r["file_path"]:
        expected = "lateral" if name == "lateral.dcm" else "frontal"
        if r["label"] != expected:
            problems.append(f"{r['file_path']}: {r['label']}, expected {expected}")
    if not r["model_version"]:
        problems.append(f"{r['file_path']}: no model version")
spooled = sum("/ingest/spool/" in r["file_path"] for r in done)
if spooled != 4:
    problems.append(f"{spooled} instances came in over the network, expected 4")
for r in sorted(rows, key=lambda r: r["file_path"]):
    print(f"  {r['status']:6} {r['label'] or '-':8} {r['confidence'] or 0:.3f} "
          f"{r['model_version'] or '-':24} {r['file_path'][:80]}", file=sys.stderr)
for p in problems:
    print("  problem:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
phase results

# --- 7. tear down -------------------------------------------------------------------
log "tearing down (compose down -v)"
compose down -v --remove-orphans > /dev/null 2>&1 || fail "compose down"
COMPOSE_UP=""
phase compose-down
exit 0
}
