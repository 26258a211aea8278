#!/usr/bin/env bash
# Builds build/gpu_wheels: metarec's own wheel and the wheels of its dependencies for CPython 3.12 on x86-64
# Linux, for benchmarks/gpu_suite.sh to install on a GPU machine that has no network, against the torch (and
# the numpy) already there. Run it here, then carry build/gpu_wheels with the checkout (at most 64 MiB).
#
#   bash benchmarks/gpu_wheels.sh            # uses .venv/bin/python (make test sets it up)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=build/gpu_wheels
LIMIT_MB=64
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" -m pip wheel -q --no-deps -w "$OUT" .
# What the suite needs besides torch and numpy: the core dependencies but matplotlib (the reports' plots,
# which the suite makes none of), and pytest for the tests marked gpu.
"$PY" -m pip download -q --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$OUT" -r benchmarks/gpu_requirements.txt
rm -f "$OUT"/numpy-*.whl  # the machine's torch brings its numpy; a second one would shadow it
size=$(du -sm "$OUT" | cut -f1)
if [ "$size" -gt "$LIMIT_MB" ]; then
    echo "gpu_wheels: $OUT is ${size} MB, more than the ${LIMIT_MB} MiB that travels with a checkout" >&2
    exit 1
fi
echo "gpu_wheels: $(ls "$OUT" | wc -l) wheels, ${size} MB in $OUT"
