#!/usr/bin/env bash
# One device call of the reproduction campaign: build mue, run sweep specs one after another until a deadline,
# then write each spec's compact results file (experiments/figures/results_bundle.py) and an archive of its run
# files (to resume the sweep in a later call: unpack it into runs/ and name runs/NAME in the call's carry).
#
# usage: DEADLINE_S=560 bash scripts/campaign.sh NAME[:PARALLEL[:SECONDS]] ...
#   NAME       a spec in experiments/sweeps/NAME.json (its out_dir must be runs/NAME)
#   PARALLEL   runs at a time on each GPU (default: the spec's `parallel`)
#   SECONDS    start no point of this spec expected to end after so many seconds (mue sweep --deadline: the
#              running points finish; a point's time expected from this call's finished points of its kind, else
#              from the results file's, --estimates); the next NAME starts then. Default: until the deadline.
# Sweeps overlap at their ends: the next NAME starts as soon as the one before has started its last point (or
# stopped starting them), and its points take the run slots the earlier one's finished points free (every sweep
# of the call shares one mue sweep --slots folder), so at most PARALLEL points run at once and the estimates of
# --deadline stay those of PARALLEL at a time. Where the NAMEs' PARALLEL differ, at most the largest run at once; a
# sweep of a smaller PARALLEL uses only the lowest slots (it may wait while higher ones are free). A NAME given
# twice runs again after its first sweep has ended.
# The whole call starts no point expected to end later than DEADLINE_S - 45 seconds after it began (default 540);
# a point still running 20 s after that is stopped (SIGINT: it stays failed and runs again next time, the index is
# rewritten), and 25 s are kept for packing.
# Across sessions: where experiments/results/NAME.json exists, only its unfinished points run (mue sweep --only)
# and the new results file merges the finished ones from it (results_bundle.py --merge): copy the NAME.json that
# comes back over experiments/results/NAME.json and commit it. A spec whose grid grew since (a `seed` axis added,
# more LRs; base and overrides unchanged) runs only its new points: the results' points land on the grown grid. RESULTS_DIR=DIR reads the results files from DIR
# instead (tests: a folder without them runs every point).
# MPS=1: the sweeps run under CUDA MPS (scripts/mps.sh), so that the processes' kernels share the GPU at once.
# Several GPUs (a multi-GPU machine, CUDA_VISIBLE_DEVICES unset: all of them; or those it lists): the sweep spreads
# its points over them, PARALLEL on each (slot k of the shared pool runs on GPU k mod their number).
# SAME_CARD=1: a spec whose results file's points ran on another kind of GPU than this call's, or on several kinds,
# is not run (without it, it runs and the log says so: the same run ends with different bits on an H100 and an H200).
# MUE_SOURCE_COMMIT=HASH: the commit to record (the build's git_commit and this log) where the tree's .git is
# stale, as on a machine that receives a copy of the working tree.
# Output under $OUT (default ./campaign-out): NAME.json, NAME-runs.tgz, campaign.log (one line a finished point).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-campaign-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
t0=$(date +%s)
deadline=$((t0 + ${DEADLINE_S:-540} - 45))
log="$OUT/campaign.log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"
echo "commit ${MUE_SOURCE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}, $(date -u +%FT%TZ)" | tee -a "$log"

if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null; then
  n=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU ")
  [ "$n" -gt 1 ] && export CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1)))
fi
IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-0}"
# The kinds of GPU this call's points run on (each run records its device's name; one line per kind): none where
# nvidia-smi is missing or fails, and then no spec's earlier cards are compared.
cards=""
if command -v nvidia-smi > /dev/null; then
  cards=$(nvidia-smi --query-gpu=name --format=csv,noheader ${CUDA_VISIBLE_DEVICES:+-i "$CUDA_VISIBLE_DEVICES"} \
            2> /dev/null | sort -u) || cards=""
fi
[ ${#gpus[@]} -gt 1 ] && echo "gpus: ${#gpus[@]} (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)" | tee -a "$log"

build=${BUILD_DIR:-build-gpu}
gen=""
command -v ninja >/dev/null && gen="-G Ninja"
if [ ! -x "$build/mue" ] || [ -n "${REBUILD:-}" ]; then
  cmake -S . -B "$build" $gen -DCMAKE_BUILD_TYPE=Release > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build "$build" --target mue -j "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
  echo "built in $(( $(date +%s) - t0 )) s" | tee -a "$log"
fi

source scripts/mps.sh
# (not `mps_start | tee`: a pipeline would run mps_start in a subshell, whose exported pipe directory the sweeps
# below would never see)
# The run slots every sweep of this call shares (mue sweep --slots), in a folder of its own, gone at the end.
# (mps_stop does nothing where mps_start did not run)
slots=$(mktemp -d "${TMPDIR:-/tmp}/mue-slots.XXXXXX") || exit 1
trap 'mps_stop; rm -rf "$slots"' EXIT
if [ -n "${MPS:-}" ]; then mps_start > >(tee -a "$log"); fi

results=${RESULTS_DIR:-experiments/results}
# One sweep in the background: its lines into the log as they come (line-buffered: sweeps overlap, below), then
# its wall time and exit status. 1: refused (the log has its one line); 3: some points failed; 130: interrupted.
run_one() {  # NAME PARALLEL LEFT ONLY
  local name=$1 par=$2 left=$3 only=$4 s0 rc est=()
  [ -f "$results/$name.json" ] && est=(--estimates "$results/$name.json")
  s0=$(date +%s)
  timeout -s INT -k 20 "$((left + 20))" "$build/mue" sweep "experiments/sweeps/$name.json" ${par:+--parallel $par} \
    --slots "$slots" --deadline "$left" "${est[@]}" ${only:+--only $only} 2>&1 | tee "$OUT/$name.sweep.out" | grep --line-buffered -E "^\[|^sweep|^mue: error" >> "$log"
  rc=${PIPESTATUS[0]}
  echo "== $name: $(( $(date +%s) - s0 )) s$([ "$rc" -ne 0 ] && echo ", mue sweep exit $rc")" | tee -a "$log"
}
names=()
pids=()
declare -A pid_of
for arg in "$@"; do
  IFS=: read -r name par secs <<< "$arg"
  names+=("$name")
  # the same spec again: after its earlier sweep has ended (two sweeps of one index would run the same points)
  [ -n "${pid_of[$name]:-}" ] && wait "${pid_of[$name]}"
  now=$(date +%s)
  left=$((deadline - now))
  [ -n "${secs:-}" ] && [ "$secs" -lt "$left" ] && left=$secs
  if [ "$left" -le 5 ]; then echo "== $name: no time left, not started" | tee -a "$log"; continue; fi
  only=""
  if [ -f "$results/$name.json" ]; then
    if ! only=$(python3 experiments/figures/results_bundle.py --missing "$results/$name.json" \
                  --spec "experiments/sweeps/$name.json" 2> "$OUT/missing.err"); then
      echo "== $name: not run: $(tail -1 "$OUT/missing.err")" | tee -a "$log"; continue
    fi
    if [ -z "$only" ]; then echo "== $name: every point finished in $results/$name.json" | tee -a "$log"; continue; fi
    # A run's bits depend on the kind of card (REPRODUCTION.md): say where the spec's points would mix kinds (its
    # earlier points on another kind than this call's, or on several), and with SAME_CARD=1 leave such a spec.
    if [ -n "$cards" ]; then
      if ! seen=$(python3 experiments/figures/cards.py --devices "$results/$name.json" 2>&1); then
        echo "== $name: its earlier points' cards not checked: $(tail -1 <<< "$seen")" | tee -a "$log"
      elif [ -n "$seen" ] && [ "$(sort -u <<< "$seen")" != "$cards" ]; then
        echo "== $name: its earlier points ran on ${seen//$'\n'/, }, this call's card is ${cards//$'\n'/, }" \
             "(a run's bits differ by card; transfer_table.py counts the rows that mix cards)" | tee -a "$log"
        if [ -n "${SAME_CARD:-}" ]; then echo "== $name: not run (SAME_CARD=1)" | tee -a "$log"; continue; fi
      fi
    fi
  fi
  if [ ${#gpus[@]} -gt 1 ]; then  # PARALLEL (or the spec's) on each GPU
    per_gpu=${par:-$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("parallel", 1))' "experiments/sweeps/$name.json")}
    par=$((per_gpu * ${#gpus[@]}))
  fi
  echo "== $name (parallel ${par:-spec}, at most $left s${only:+, points $only})" | tee -a "$log"
  : > "$OUT/$name.sweep.out"
  run_one "$name" "${par:-}" "$left" "$only" &
  pids+=($!)
  pid_of[$name]=$!
  # The next spec starts once this sweep has started its last point or stopped starting them (or ended), so that
  # the slots its last points leave free train the next spec's points instead of idling.
  while kill -0 "$!" 2>/dev/null &&
        ! grep -qE "^sweep $name: (every point started|--deadline .*starting no more points)" "$OUT/$name.sweep.out"; do
    sleep 1
  done
done
for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null; done  # (one waited for above is no child any more)

# MPS servers exist only where client processes connected: evidence that the sweeps ran under MPS
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] &&
  echo "mps: servers (pids) $(echo get_server_list | nvidia-cuda-mps-control | tr '\n' ' ')" | tee -a "$log"
for name in "${names[@]}"; do
  index="runs/$name/$name-index.h5"
  [ -f "$index" ] || continue
  prev="$results/$name.json"
  python3 experiments/figures/results_bundle.py "$index" --out "$OUT/$name.json" \
    $( [ -f "$prev" ] && echo --merge "$prev" ) 2>&1 | tail -3
  [ -n "${TGZ:-}" ] && tar czf "$OUT/$name-runs.tgz" -C runs "$name"
done
grep -E "^== |^mue: error|^sweep .* completed|^sweep .*: (a point's process|mean time)" "$log"  # with the fixed cost per point
for name in "${names[@]}"; do
  # with the penalty at the dense proxy's LR where the proxy's results are there (wd-lm and the Fig 6 specs have
  # no LR grid of their own worth a transfer line: their tables come from sweep_wd.py and sweep_shape.py)
  case $name in *-flow) proxy="$results/dense-proxy-flow.json";; *) proxy="$results/dense-proxy-lm.json";; esac
  case $name in dense-proxy-*|wd-lm|shape-fixed-hp-*) proxy="";; esac
  if [ -f "$OUT/$name.json" ]; then
    python3 experiments/figures/transfer_table.py "$OUT/$name.json" --brief $([ -n "$proxy" ] && [ -f "$proxy" ] && echo --proxy "$proxy") 2>&1 | tail -40
  fi
done
