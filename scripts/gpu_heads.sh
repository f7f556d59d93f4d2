#!/usr/bin/env bash
# What made compact-invariant-64-v2's heads, on the lent H200 (Keras 3 on JAX from carried
# wheels; ../shared/GPU.md). Carry .whl-heads (keras, optree, namex, pydantic and
# pydantic-settings, sqlalchemy: what recipes.compact_invariant_64_v2 and bench.gpu --models-only import)
# and .devdata (python -m recipes.compact_invariant_64_v1 --make-npz .devdata/covid-cxr-256.npz).
# Three seeds train in parallel; the one shipped is chosen on the validation patients
# afterwards (python -m recipes.compact_invariant_64_v2 --evaluate-only adds the non-chest figures here,
# where pydicom's test files are). Then both models are timed side by side.
set -euo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-heads/*.whl
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
work=/tmp/heads
rm -rf "$work" && mkdir -p "$work"
for seed in ${SEEDS:-20200601 7 11}; do
    python3 -m recipes.compact_invariant_64_v2 --npz .devdata/covid-cxr-256.npz \
        --base cxr_orient/shipped/compact-invariant-64-v1.keras \
        --split cxr_orient/shipped/split.json --out "$work/seed-$seed" --seed "$seed" \
        --epochs "${EPOCHS:-80}" --workers 5 --skip-non-chest --verbose 2 \
        > "$work/seed-$seed.log" 2>&1 &
done
wait
tail -n 3 "$work"/seed-*.log > "$OUT/train-tail.txt"
tar -C "$work" -czf "$OUT/heads.tar.gz" .
first=$(ls -d "$work"/seed-* | head -1)
for model in "$first"/compact-invariant-64-v2.keras cxr_orient/shipped/compact-invariant-64-v1.keras; do
    python3 -m bench.gpu --model "$model" --models-only --machine h200 \
        --out "$work/models/$(basename "$model" .keras)" >> "$OUT/models.log" 2>&1 || true
done
tar -C "$work" -czf "$OUT/models.tar.gz" models || true
