#!/usr/bin/env bash
# One call on the GPU machine: build, run the whole test suite (GPU tests included), bench the presets, and a
# short real training run. Logs go to $OUT (or ./gpu-out).
# Env: PRESETS (bench), PROFILE (presets to profile per op), TILE_SWEEP (presets to profile under every expert
# GEMM tile configuration, the kernel variant expert_tile of core/kernel_variants.h; TILE_LIST: which ones, "t" for
# both kernels or "r,w", default all), VARIANTS (kernel-variant specs separated by '|', e.g. "fused_head=0|fused_head=1":
# each of VARIANT_PRESETS profiled under each, in one call), TESTS (a Catch2 filter, default
# all), NO_SWEEP, FLOW_STEPS, SANITIZE (1: compute-sanitizer memcheck and synccheck on the [cuda] tests, racecheck on
# the attention, expert-GEMM and router tests; logs in $OUT/sanitize-*.log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
presets=${PRESETS-gpt2s-dense small-dense gpt2s-moe small-moe}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j 16 > "$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
echo "== tests"
(cd build-gpu && timeout ${TEST_TIMEOUT:-300} ./mue_tests --durations yes ${TESTS:-} > "$OUT/tests.log" 2>&1); echo "tests rc $?"
grep -E "FAILED|failed|passed|No GPU|no GPU" "$OUT/tests.log" | tail -15
grep -B2 -A12 "FAILED" "$OUT/tests.log" | head -80
if [ -n "${SANITIZE:-}" ]; then
  echo "== compute-sanitizer"
  for tool in memcheck synccheck; do
    (cd build-gpu && timeout ${SANITIZE_TIMEOUT:-900} compute-sanitizer --tool $tool --error-exitcode 99 \
      ./mue_tests "[cuda]" > "$OUT/sanitize-$tool.log" 2>&1); echo "$tool rc $?"
    grep -E "ERROR SUMMARY|test cases" "$OUT/sanitize-$tool.log" | tail -2
  done
  i=0
  for t in "CUDA flash attention forward and backward*" "CUDA expert GEMMs (grouped*" "CUDA router:*"; do
    i=$((i + 1))
    (cd build-gpu && timeout ${SANITIZE_TIMEOUT:-900} compute-sanitizer --tool racecheck --error-exitcode 99 \
      ./mue_tests "$t" > "$OUT/sanitize-racecheck-$i.log" 2>&1); echo "racecheck '$t' rc $?"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize-racecheck-$i.log" | tail -2
  done
fi
echo "== bench"
for p in $presets; do
  timeout 120 ./build-gpu/mue bench "$p" --steps 20 2>&1 | tail -1 | tee -a "$OUT/bench.txt"
done
for p in ${PROFILE:-}; do
  echo "== profile $p"
  timeout 120 ./build-gpu/mue bench "$p" --steps 10 --profile > "$OUT/profile-$p.txt" 2>&1
  head -25 "$OUT/profile-$p.txt"
done
for p in ${TILE_SWEEP:-}; do
  echo "== expert GEMM tiles, $p (ms/step: forward, backward)"
  for t in ${TILE_LIST:-$(seq 0 $((${TILE_CONFIGS:-12} - 1)))}; do
    case $t in *,*) tt=$t ;; *) tt=$t,$t ;; esac  # "r,w" or one configuration for both
    f="$OUT/tiles-$p-${tt/,/-}.txt"  # no comma: the device tool does not bring such names back
    MUE_KERNEL_VARIANTS="expert_tile=$tt" timeout 120 ./build-gpu/mue bench "$p" --steps 10 --profile > "$f" 2>&1
    echo "tile $t: $(grep -E "expert_matmul_(forward|backward)" "$f" | awk '{printf "%s %s  ", $1, $3}')$(tail -1 "$f" | awk '{print $(NF-5) " ms/step"}')"
  done
done
if [ -n "${VARIANTS:-}" ]; then
  IFS='|' read -ra specs <<< "$VARIANTS"
  for p in ${VARIANT_PRESETS:-experiments/configs/proxy-d128.json small-dense gpt2s-dense}; do
    echo "== kernel variants, $p (ms/step; the five slowest ops)"
    for v in "${specs[@]}"; do
      f="$OUT/variant-$(basename "$p" .json)-$(echo "$v" | tr -c 'A-Za-z0-9_\n' '-').txt"
      MUE_KERNEL_VARIANTS="$v" timeout 120 ./build-gpu/mue bench "$p" --steps 20 --profile > "$f" 2>&1
      echo "$v: $(tail -1 "$f")"
      sed -n '/^per-op device time/,+6p' "$f" | tail -5 | sed 's/^/    /'
    done
  done
fi
if [ -f data-cache/linux-doc.tok ] && [ -z "${NO_SWEEP:-}" ]; then
  echo "== default sweep on the GPU"
  timeout 240 ./build-gpu/mue sweep --lr 0.003,0.01,0.03 name=gpu-quick out.dir="$OUT/runs" 2>&1 | tail -6
fi
if [ -f data-cache/fashion-mnist.h5 ] && [ -n "${FLOW_STEPS:-}" ]; then
  echo "== Fashion-MNIST DiT"
  timeout ${FLOW_TIMEOUT:-300} ./build-gpu/mue train experiments/configs/dit-fashion.json train.steps=$FLOW_STEPS \
    out.dir="$OUT/runs" 2>&1 | grep -E "val loss|completed|diverged|error" | tail -6
  ./build-gpu/mue sample "$OUT/runs/dit-fashion.h5" --out "$OUT/dit-fashion-samples.png" --per-class 10 2>&1 | tail -2
fi
