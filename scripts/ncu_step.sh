#!/usr/bin/env bash
# Per-kernel GPU times of a bench preset's first steps under Nsight Compute (duration only), summed by kernel
# name: where a fused op's milliseconds go. Usage: bash scripts/ncu_step.sh PRESET|CONFIG.json [KERNEL_REGEX] (needs ncu and
# build-gpu/mue; writes $OUT/ncu-NAME.csv and prints the table).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
p=$1 re=${2:-.}
name=$(basename "$p" .json)  # a preset or a config file
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "ncu not found"; exit 1; }
timeout ${NCU_TIMEOUT:-300} "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k "regex:$re" \
  --launch-count ${NCU_LAUNCHES:-3000} ./build-gpu/mue bench "$p" --steps 1 > "$OUT/ncu-$name.csv" 2> "$OUT/ncu-$name.err"
echo "ncu rc $?"
python3 - "$OUT/ncu-$name.csv" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; k = head.index("Kernel Name"); v = head.index("Metric Value")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    name = re.sub(r"[(].*", "", re.sub(r"^void ", "", r[k])).split("::")[-1]
    tot[name] += float(r[v].replace(",", "")) / 1e3; cnt[name] += 1
print(f"{'kernel':52s} {'calls':>6s} {'total us':>10s} {'us/call':>9s}")
for n, t in sorted(tot.items(), key=lambda x: -x[1])[:45]:
    print(f"{n[:52]:52s} {cnt[n]:6d} {t:10.1f} {t / cnt[n]:9.2f}")
PY
