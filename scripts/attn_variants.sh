#!/usr/bin/env bash
# Times the Hopper attention tile variants (MUE_FLASH_SM90_TILES="f,b") and the mma.sync kernels on the bench
# presets; needs build-gpu from scripts/gpu_check.sh. Env: PRESETS, VARIANTS. Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
for p in ${PRESETS:-gpt2s-dense small-dense}; do
  for v in ${VARIANTS:-0,0 1,0 0,1 0,2 1,1 mma}; do
    f="$OUT/attn-$p-${v/,/-}.txt"
    if [ "$v" = mma ]; then env MUE_FLASH_SM90=0 timeout 60 ./build-gpu/mue bench "$p" --steps 10 --profile > "$f" 2>&1
    else env MUE_FLASH_SM90_TILES=$v timeout 60 ./build-gpu/mue bench "$p" --steps 10 --profile > "$f" 2>&1; fi
    echo "$p $v: $(grep -E "^ *attention_(forward|backward)" "$f" | awk '{printf "%s %s  ", $1, $3}')$(tail -1 "$f" | awk '{print $(NF-5) " ms/step"}')"
  done
done
