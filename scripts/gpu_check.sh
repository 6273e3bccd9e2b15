#!/usr/bin/env bash
# One call on the GPU machine: build, run the whole test suite (GPU tests included), bench the presets, and a
# short real training run. Logs go to $OUT (or ./gpu-out). Usage: bash scripts/gpu_check.sh [presets...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
presets=${*:-gpt2s-dense small-dense gpt2s-moe small-moe}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
echo "== tests"
(cd build-gpu && timeout 300 ./mue_tests --durations yes > "../$OUT/tests.log" 2>&1); echo "tests rc $?"
grep -E "FAILED|failed|passed|No GPU|no GPU" "$OUT/tests.log" | tail -15
grep -B2 -A12 "FAILED" "$OUT/tests.log" | head -80
echo "== bench"
for p in $presets; do
  timeout 120 ./build-gpu/mue bench "$p" --steps 20 2>&1 | tail -1 | tee -a "$OUT/bench.txt"
done
