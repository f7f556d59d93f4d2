#!/usr/bin/env bash
# Build what a call on the lent GPU carries, from pinned versions, in one command:
#
#   bash scripts/gpu_carry.sh            # from the repository root, here (not there)
#
# .whl/site.tar.xz  the Python 3.12 packages the machine lacks (scripts/gpu-carry.txt),
#                   downloaded as cp312 manylinux x86_64 wheels, unpacked into one
#                   folder, trimmed (other Pythons' extension modules, nvImageCodec's
#                   OpenCV and TIFF extensions, tests, caches) and packed with xz
# .whl/corpus/      bench corpus files the machine cannot encode (HTJ2K: OpenJPH through
#                   imagecodecs, here; the carried imagecodecs keeps only libjpeg-turbo,
#                   which writes the JPEG lossless files there)
# .devbin/redis.tar.xz  redis-server and the shared libraries it needs beyond glibc
#
# Then `run` with carry [".whl", ".devbin"] and `bash scripts/gpu_archive.sh` there.
# Checks that the whole call (tracked tree + these) stays under the 64 MiB it may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rm -rf .whl .devbin
mkdir -p .whl .devbin "$stage/wheels" "$stage/site" "$stage/redis/lib"

grep -v '^#' scripts/gpu-carry.txt | grep . > "$stage/pins.txt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any \
    -d "$stage/wheels" -r "$stage/pins.txt"
for wheel in "$stage"/wheels/*.whl; do
    "$PY" -m zipfile -e "$wheel" "$stage/site"
done
# Trim: extension modules of other Pythons, decoders the worker never asks nvImageCodec
# for, test suites and byte code.
find "$stage/site" -name '*.cpython-3*' ! -name '*cpython-312*' -delete
find "$stage/site" -path '*nvimgcodec/extensions/*' \( -name '*opencv*' -o -name '*tiff*' \) -delete
find "$stage/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
# imagecodecs: only libjpeg-turbo (JPEG lossless on the CPU, 44 MiB -> 6.5 MiB unpacked);
# its other codecs then report themselves unavailable.
find "$stage/site/imagecodecs" -name '_*.so' ! -name '_jpeg8.*' ! -name '_shared*' \
    ! -name '_imcd.*' -delete
find "$stage/site/imagecodecs.libs" -type f ! -name 'libjpeg-*' -delete
rm -rf "$stage/site/imagecodecs/licenses"
tar -C "$stage/site" -cJf .whl/site.tar.xz .

# Corpus files the lent machine cannot write (a frontal and a lateral).
PYTHONPATH=$PWD "$PY" - <<'PYEOF'
from pathlib import Path
from bench.corpus import build_corpus
for name in ("htj2k-lossy",):
    build_corpus(Path(".whl/corpus"), per_syntax=2, syntaxes=(name,))
PYEOF

# redis-server, with every library it links beyond glibc's own.
server=$(command -v redis-server)
cp "$server" "$stage/redis/redis-server"
ldd "$server" | awk '/=> \//{print $3}' | grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
    | xargs -r cp -L -t "$stage/redis/lib"
tar -C "$stage/redis" -cJf .devbin/redis.tar.xz .

total=$(( $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) \
          + $(du -sb .whl .devbin | awk '{s+=$1} END {print s}') ))
ls -la .whl .whl/corpus .devbin
echo "carried with the tracked tree: $(( total / 1048576 )) MiB of 64"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "over the 64 MiB a call may carry" >&2; exit 1; }
