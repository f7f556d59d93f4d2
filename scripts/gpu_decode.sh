#!/usr/bin/env bash
# The card-decode bench on the lent GPU (bench/gpu_decode.py), one call. Run from the
# repository root there with OUT set; carry .whl (site.tar.xz: the Python 3.12 packages
# the machine lacks, nvImageCodec among them, unpacked into /tmp/site; htj2k/: HTJ2K
# corpus files, which the machine cannot encode) and .devbin (redis-server and its
# libraries). Arguments go to python -m bench.gpu_decode (e.g. --quick).
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
mkdir -p /tmp/site "$OUT/results"
tar xJf .whl/site.tar.xz -C /tmp/site && python3 -m zipfile -e .whl/highdicom-0.28.2-py3-none-any.whl /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
export OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib:/tmp/site/nvidia/nvjpeg2k/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/results/gpu.txt" 2>&1
python3 -c "import nvidia.nvimgcodec as n, cupy, jax, keras; print('nvimgcodec', n.__version__, 'cupy', cupy.__version__, 'jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" 2>&1 | tee "$OUT/results/versions.txt"
LD_LIBRARY_PATH=$PWD/.devbin/lib .devbin/redis-server --daemonize yes --bind 127.0.0.1 \
    --port 6379 --save "" --appendonly no --logfile /tmp/redis.log
# The studies take GBs: write them where there is most room.
df -h /tmp "$PWD" /dev/shm /root > "$OUT/results/disk.txt" 2>&1
work=$(df -P /tmp "$PWD" /dev/shm 2>/dev/null | tail -n +2 | sort -k4 -n | tail -1 | awk '{print $6}')
python3 -m bench.gpu_decode --root "${work%/}/gpu-decode-work" --model "${MODEL:-cxr_orient/shipped/compact-invariant-64-v2.keras}" \
    --out "$OUT/results" --carried .whl/htj2k --machine "${MACHINE:-h200}" "$@" 2>&1 \
    | tee "$OUT/results/bench.log"
tar czf "$OUT/logs.tar.gz" -C "$OUT/results" --remove-files $(cd "$OUT/results" && ls worker-*.log 2>/dev/null) 2>/dev/null
cp /tmp/redis.log "$OUT/results/" 2>/dev/null || true
