#!/usr/bin/env bash
# What runs on the lent H100 (no TensorFlow, no internet: Keras 3 on JAX from carried
# wheels, see ../shared/GPU.md). Run from the repository root on that machine:
#
#   scripts/h100.sh train   # carry .whl .devdata: train the shipped model's candidates
#   scripts/h100.sh bench   # carry .whl .devbin:  python -m bench.gpu with the pipeline
#                           # (CXR_* variables in the environment reach its worker, e.g.
#                           # CXR_MIXED_PRECISION=bfloat16; MODEL=path picks the model)
#   scripts/h100.sh train+models  # carry .whl-train .devdata: train, then time the new
#                           # model and the previous one side by side (bench.gpu --models-only)
#
# .whl holds the Python 3.12 wheels (GPU.md lists them, plus celery-batches, pydantic,
# pydantic-settings, alembic, pyjpegls, pylibjpeg-rle); .devdata the decoded covid-cxr
# (python -m recipes.compact_invariant_64_v1 --make-npz .devdata/covid-cxr-256.npz) and its manifest.csv;
# .devbin a redis-server binary with its shared libraries in .devbin/lib. A call may
# carry 64 MiB with the tree: for train, WHEELS=.whl-train names a copy of .whl
# without the worker-only wheels (celery and its kin, the JPEG-LS codecs, greenlet).
# Everything is written under $OUT.
set -euo pipefail
mode=${1:?usage: scripts/h100.sh train|bench}
OUT=${OUT:?set OUT to the folder that comes back}

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${WHEELS:-.whl}"/*.whl
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax
# Several processes share the card: none may take 75 % of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true

case "$mode" in
train|train+models)
    # Three seeds each of the default architecture and of its slim sibling in parallel (the
    # recipe's candidates); the one shipped is chosen on the validation patients only.
    # $OUT returns at most 8 files, two folders down: work in /tmp, send back archives.
    work=/tmp/ship
    rm -rf "$work"
    python3 -m recipes.compact_invariant_64_v1 --npz .devdata/covid-cxr-256.npz \
        --manifest .devdata/manifest.csv \
        --out "$work/shipped" --report "$work/report" --work "$work/candidates" \
        --jobs 6 --workers 2 --time-budget "${TIME_BUDGET:-250}" --verbose 2 \
        2>&1 | tee "$OUT/train.log"
    tar -C "$work" -czf "$OUT/shipped.tar.gz" shipped report
    tar -C "$work" -czf "$OUT/candidates.tar.gz" --exclude='*.png' candidates
    if [ "$mode" = train+models ]; then
        for model in "$work"/shipped/*.keras cxr_orient/shipped/compact-v1.keras; do
            python3 -m bench.gpu --model "$model" --models-only --machine "${MACHINE:-gpu}" \
                --out "$work/models/$(basename "$model" .keras)" 2>&1 | tee -a "$OUT/models.log"
        done
        tar -C "$work" -czf "$OUT/models.tar.gz" models
    fi
    ;;
bench)
    export LD_LIBRARY_PATH=$PWD/.devbin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    .devbin/redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
        --appendonly no --logfile "$OUT/redis.log"
    # One BLAS thread per process, as the worker sets for itself (worker/__init__.py).
    export OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
    python3 -m bench.gpu --model "${MODEL:-cxr_orient/shipped/compact-invariant-64-v1.keras}" --out "$OUT/results" \
        --machine "${MACHINE:-h100}" --pipeline --broker-url redis://127.0.0.1:6379/0 \
        --studies "${STUDIES:-1000}" --budget-s 540 --worker-log "$OUT/worker.log" \
        --drain-timeout "${DRAIN_TIMEOUT:-300}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
    ;;
*)
    echo "unknown mode $mode" >&2; exit 2 ;;
esac
