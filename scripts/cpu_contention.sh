#!/usr/bin/env bash
# A tiny CPU run's throughput with one core of the machine kept busy by another process, under each OpenMP
# wait policy (issue 24, section 3). Prints one line per condition: the tok/s of REPS runs (the steps' own time,
# from the run's timing line), for two sizes: "tiny" (d64 L2, 8 x 64 tokens) and "small" (d32 L1, 4 x 32 tokens,
# where a step is many short parallel regions). Run it on an otherwise idle machine.
# usage: bash scripts/cpu_contention.sh [REPS]
set -uo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
data=data-cache/linux-doc-v4096.tok
[ -f $data ] || { echo "cpu_contention: needs $data (bash scripts/quickstart.sh prepares it)" >&2; exit 1; }
common="model.vocab=4096 train.steps=${STEPS:-30} train.log_every=10 train.eval_every=100000 data.tokens=$data
  out.checkpoint=false out.overwrite=true name=contention out.dir=${TMPDIR:-/tmp}/mue-contention"
size=tiny
declare -A shape=(
  [tiny]="model.d_model=64 model.n_layers=2 model.n_heads=2 ffn.hidden=256 model.seq_len=64 train.batch=8"
  [small]="model.d_model=32 model.n_layers=1 model.n_heads=2 ffn.hidden=64 model.seq_len=32 train.batch=4")
declare -A tokens=([tiny]=512 [small]=128)
run() {  # one run's tok/s over its steps after the first
  local t; t=$(env "$@" ./build/mue train ${shape[$size]} $common 2>&1 | grep -o 'steps [0-9.]* ([0-9]*)')
  awk -v t="$t" -v n=${tokens[$size]} 'BEGIN { split(t, a, /[ ()]+/); printf "%.0f", a[3] * n / a[2] }'
}
condition() {  # name, then the environment of the run
  local name=$1; shift
  printf "%-6s %-44s" "$size" "$name"
  for i in $(seq $reps); do printf " %6s" "$(run "$@")"; done
  echo " tok/s"
}
echo "$(nproc) cores, $(date -u +%FT%TZ), load $(cut -d' ' -f1 /proc/loadavg)"
for size in tiny small; do condition "idle, OpenMP default" X=1; done
sh -c 'while :; do :; done' & busy=$!
trap 'kill -9 $busy 2>/dev/null; wait $busy 2>/dev/null' EXIT INT TERM
for size in tiny small; do
  condition "one core busy, OpenMP default" X=1
  condition "one core busy, OMP_WAIT_POLICY=PASSIVE" OMP_WAIT_POLICY=PASSIVE
  condition "one core busy, OMP_WAIT_POLICY=ACTIVE" OMP_WAIT_POLICY=ACTIVE
  condition "one core busy, OMP_NUM_THREADS=1" OMP_NUM_THREADS=1
done
