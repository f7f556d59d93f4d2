#!/usr/bin/env bash
# The archive-mix bench on the lent GPU (bench/gpu_archive.py), one call. Build what it
# carries here first, in one command: `bash scripts/gpu_carry.sh` (.whl: site.tar.xz and
# corpus/; .devbin: redis.tar.xz); then `run` with carry [".whl", ".devbin"] and
#   bash scripts/gpu_archive.sh [bench.gpu_archive arguments, e.g. --mixes lossy-archive]
# Everything comes back under $OUT/results (the JSON, the Markdown summary, the logs).
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
mkdir -p /tmp/site /tmp/redis "$OUT/results"
start=$(date +%s)
tar xJf .whl/site.tar.xz -C /tmp/site && tar xJf .devbin/redis.tar.xz -C /tmp/redis || exit 1
echo "unpacked in $(( $(date +%s) - start )) s"
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
export OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
# XLA's compiled programs kept on disk: the first worker started compiles, every later one
# (the next layout, a restarted worker) loads them (docs/deployment.md).
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
export LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib:/tmp/site/nvidia/nvjpeg2k/lib:/tmp/site/nvidia/nvjpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/results/gpu.txt" 2>&1
# The report is named after the card that ran it (a call for one kind may get another).
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$card" in *H200*) card=h200 ;; *H100*) card=h100 ;; *) card=gpu ;; esac
python3 -c "import nvidia.nvimgcodec as n, cupy, jax, keras, pydicom, celery, imagecodecs; print('nvimgcodec', n.__version__, 'cupy', cupy.__version__, 'jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'pydicom', pydicom.__version__, 'celery', celery.__version__, 'imagecodecs', imagecodecs.__version__, 'libjpeg-turbo', imagecodecs.JPEG8.available)" 2>&1 | tee "$OUT/results/versions.txt"
LD_LIBRARY_PATH=/tmp/redis/lib /tmp/redis/redis-server --daemonize yes --bind 127.0.0.1 \
    --port 6379 --save "" --appendonly no --logfile /tmp/redis.log
df -h /tmp "$PWD" /dev/shm > "$OUT/results/disk.txt" 2>&1
python3 -m bench.gpu_archive --root /tmp/gpu-archive \
    --model "${MODEL:-cxr_orient/shipped/compact-invariant-64-v4.keras}" \
    --out "$OUT/results" --carried .whl/corpus --machine "${MACHINE:-$card}" \
    --budget-s "${BUDGET_S:-520}" --mix-films "${LOSSY_FILMS:-lossy-archive=5000}" "$@" 2>&1 \
    | tee "$OUT/results/bench.log" | grep -v -E "^\s*$|DEBUG"
logs=$(cd "$OUT/results" && ls worker-*.log 2>/dev/null)
[ -n "$logs" ] && tar czf "$OUT/logs.tar.gz" -C "$OUT/results" --remove-files $logs
cat "$OUT"/results/*-gpu-archive.md 2>/dev/null
