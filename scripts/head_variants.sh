#!/usr/bin/env bash
# Times the LM head by vocabulary chunks (kernel variant head_vocab_chunk=n, core/kernel_variants.h; 0 = by rows,
# the default) on the bench presets and the campaign's LM point, with the per-op profile; needs build-gpu from
# scripts/gpu_check.sh. Env: CHUNKS (column counts, 0 first as the baseline), PRESETS ("name args" entries
# separated by ';'). Logs go to $OUT; one line per run: ms a step, tok/s and the head's ops.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
IFS=';' read -ra presets <<< "${PRESETS:-small-dense model.d_model=128 model.seq_len=256 train.batch=32 ffn.hidden=512;small-dense;gpt2s-dense}"
for p in "${presets[@]}"; do
  for n in ${CHUNKS:-0 512 1024 2048 4096}; do
    f="$OUT/head-$(echo "$p" | tr ' =.' '_--')-$n.txt"
    MUE_KERNEL_VARIANTS=head_vocab_chunk=$n timeout 90 ./build-gpu/mue bench $p --steps 20 --profile > "$f" 2>&1
    echo "$p | chunk $n: $(tail -1 "$f" | awk '{print $(NF-5) " ms/step, " $(NF-4) " tok/s, " $(NF-1) " MiB of activations"}') | $(grep -E "^ *(matmul|crossentropy|round_to_act)" "$f" | awk '{printf "%s %s  ", $1, $3}')"
  done
done
