#!/usr/bin/env bash
# On the GPU machine: install, run the GPU kernel tests, then the kernel benchmark. Logs go to $OUT (or ./out).
# usage: bash bench/device_kernels.sh [pytest -k expression] [extra benchmark args...]
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
pip install --no-deps --no-build-isolation -e . -q --root-user-action=ignore 2>&1 | tail -2
# an older setuptools there installs a plain path entry without the package-dir mapping: link the two folders in
python3 -c "import seqbackbone.kernels" 2>/dev/null || {
    python3 -c "import setuptools; print('setuptools', setuptools.__version__, '(no package-dir mapping: linking)')"
    ln -sfn ../kernels seqbackbone/kernels; ln -sfn ../tasks seqbackbone/tasks; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
K=${1:-}
shift || true
if [ "$K" != "none" ]; then
    timeout 330 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gpu_*.py ${K:+-k "$K"} 2>&1 \
        | tee "$OUT/gpu_tests.log" | grep -v "^$" | tail -25
fi
timeout 240 python3 -m seqbackbone.bench kernels --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log" \
    | grep -v "^variant" 
grep "^variant" "$OUT/bench.log" | sed 's/variant //' | cut -c1-200
