#!/usr/bin/env bash
# Seconds per sweep point on this machine's GPU: the first N points of a sweep spec run at --parallel P, with or
# without CUDA MPS (scripts/mps.sh), each setting in a fresh scratch directory, timed by the wall clock.
# usage: bash scripts/sweep_throughput.sh SPEC.json P:N[:mps] ...     e.g. 1:2 4:8 4:8:mps 8:8:mps
# Prints one row per setting (and appends it to $OUT/throughput.tsv): P, N, mps, wall s, s/point, completed; and
# where each point's time went, the mean over the setting's points of every phase of the run files' /timing
# (seconds; counts for *_count) beside the mean process time per point, as seen by the sweep, and its fixed
# cost (all but steps and evaluations), one row per setting in $OUT/throughput-phases.tsv (README: "Where a
# run's time goes").
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/mps.sh
spec=$1; shift
mue=${MUE:-build-gpu/mue}
OUT=${OUT:-campaign-out}
mkdir -p "$OUT"
scratch=$(mktemp -d /tmp/mue-throughput.XXXX)
printf "parallel\tpoints\tmps\twall_s\ts_per_point\tcompleted\n" | tee -a "$OUT/throughput.tsv"
for setting in "$@"; do
  IFS=: read -r par n mps <<< "$setting"
  tag="p$par-n$n${mps:+-mps}"
  python3 - "$spec" "$scratch/$tag.json" "$scratch/$tag" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["name"] = "throughput"; s["out_dir"] = sys.argv[3]
json.dump(s, open(sys.argv[2], "w"))
PY
  if [ -n "$mps" ]; then mps_start || continue; fi
  t0=$(date +%s.%N)
  "$mue" sweep "$scratch/$tag.json" --parallel "$par" --only "0-$((n - 1))" > "$scratch/$tag.log" 2>&1
  t1=$(date +%s.%N)
  [ -n "$mps" ] && mps_stop > /dev/null
  done_n=$(grep -oE "[0-9]+ completed" "$scratch/$tag.log" | tail -1 | cut -d" " -f1)
  awk -v p="$par" -v n="$n" -v m="${mps:-no}" -v a="$t0" -v b="$t1" -v c="$done_n" \
    'BEGIN { printf "%s\t%s\t%s\t%.1f\t%.2f\t%s\n", p, n, m, b - a, (b - a) / n, c }' | tee -a "$OUT/throughput.tsv"
  tail -5 "$scratch/$tag.log" > "$OUT/throughput-$tag.log"
  "$mue" show "$scratch/$tag/throughput-index.h5" --json > "$scratch/$tag-index.json" 2> /dev/null
  python3 - "$par" "$n" "${mps:-no}" "$scratch/$tag.log" "$scratch/$tag-index.json" "$OUT/throughput-phases.tsv" <<'PY'
import json, os, re, sys
par, n, mps, log, index, tsv = sys.argv[1:7]
try:
    mean = json.load(open(index)).get("timing_mean") or {}
except ValueError:  # no index (the sweep failed before writing one)
    mean = {}
# the sweep's own line: "a point's process 7.31 s on average (8 points): fixed cost 2.10 s ..."
m = re.findall(r"a point's process ([0-9.]+) s on average \(\d+ points\): fixed cost ([0-9.]+) s", open(log).read())
process, fixed = m[-1] if m else ("nan", "nan")
keys = list(mean)  # the phases in their order, then total, before_main, counts
header = ["parallel", "points", "mps", "process_s", "fixed_s"] + keys
row = [par, n, mps, process, fixed] + ["nan" if mean[k] is None else f"{mean[k]:.3f}" for k in keys]
new = not os.path.exists(tsv)
with open(tsv, "a") as out:
    if new:
        out.write("\t".join(header) + "\n")
    out.write("\t".join(row) + "\n")
print("  per point:", " ".join(f"{k}={v}" for k, v in zip(header[3:], row[3:])))
PY
done
rm -rf "$scratch"
