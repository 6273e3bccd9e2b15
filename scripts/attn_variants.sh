#!/usr/bin/env bash
# Times the Hopper attention tile variants (kernel variant flash_sm90_tiles=f,b, core/kernel_variants.h) and the
# mma.sync kernels (flash_sm90=0) on the bench presets; needs build-gpu from scripts/gpu_check.sh. Env: PRESETS,
# VARIANTS ("f,b" or mma). Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
for p in ${PRESETS:-gpt2s-dense small-dense}; do
  for v in ${VARIANTS:-0,0 1,0 0,1 0,2 1,1 mma}; do
    f="$OUT/attn-$p-${v/,/-}.txt"
    if [ "$v" = mma ]; then variant=flash_sm90=0; else variant=flash_sm90_tiles=$v; fi
    MUE_KERNEL_VARIANTS=$variant timeout 60 ./build-gpu/mue bench "$p" --steps 10 --profile > "$f" 2>&1
    echo "$p $v: $(grep -E "^ *attention_(forward|backward)" "$f" | awk '{printf "%s %s  ", $1, $3}')$(tail -1 "$f" | awk '{print $(NF-5) " ms/step"}')"
  done
done
