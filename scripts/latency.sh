#!/usr/bin/env bash
# The paper's Fig 7 type: step latency of an MoE against its activated experts a at fixed total experts N, beside
# the dense model of the same active width (hidden = a x expert width), by `mue bench` on this machine's GPU.
# usage: bash scripts/latency.sh [PRESET] [N]    (defaults: small-moe, 64; PRESET is a bench preset with ffn.type=moe)
# Writes $OUT/latency-PRESET.tsv (model, a, active hidden, ms/step, tok/s) and prints it; the figure:
#   python3 experiments/figures/latency.py $OUT/latency-PRESET.tsv --out latency.png
set -uo pipefail
cd "$(dirname "$0")/.."
preset=${1:-small-moe}
n=${2:-64}
mue=${MUE:-build-gpu/mue}
steps=${STEPS:-30}
OUT=${OUT:-campaign-out}
mkdir -p "$OUT"
tsv="$OUT/latency-$preset.tsv"
ew=$(python3 -c "import json; c=json.load(open('experiments/configs/bench/$preset.json')); print(c['ffn'].get('expert_hidden', 0))")
[ "$ew" -gt 0 ] || { echo "latency.sh: preset $preset has no ffn.expert_hidden (not an MoE preset)"; exit 2; }
command -v nvidia-smi >/dev/null && echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(git rev-parse --short HEAD 2>/dev/null), $(date -u +%F)" > "$tsv"
printf "model\ta\tactive_hidden\tms_per_step\ttok_per_s\n" | tee -a "$tsv"
for a in 1 2 4 8 16 32 64; do
  [ "$a" -le "$n" ] || continue
  for model in moe dense; do
    if [ $model = moe ]; then over="ffn.shape=${n}e${a}a"; else over="ffn.type=dense ffn.hidden=$((a * ew))"; fi
    line=$(timeout 120 "$mue" bench "$preset" --steps "$steps" $over 2>&1 | tail -1)
    awk -v m=$model -v a=$a -v h=$((a * ew)) '{ printf "%s\t%s\t%s\t%s\t%s\n", m, a, h, $(NF-5), $(NF-4) }' <<< "$line" | tee -a "$tsv"
  done
done
