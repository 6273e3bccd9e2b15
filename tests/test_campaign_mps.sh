#!/usr/bin/env bash
# scripts/campaign.sh with MPS=1 must hand the MPS pipe directory to the sweeps it starts, and stop the daemon it
# started when it ends. Runs without a GPU: a fake nvidia-cuda-mps-control (a FIFO and a sleeping process named
# after the daemon) and a fake mue that records what environment its sweep saw. (Run in a pipeline, mps_start's
# exports would stay in a subshell and never reach the sweeps.) Also: a sweep that mue refuses leaves its one-line
# error and its exit status in the campaign's log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/build" "$tmp/out" "$tmp/results"  # no results files: every point of the spec runs

cat > "$tmp/bin/nvidia-cuda-mps-control" <<FAKE
#!/usr/bin/env bash
if [ "\${1:-}" = "-d" ]; then
  mkfifo "\$CUDA_MPS_PIPE_DIRECTORY/control"
  (exec -a nvidia-cuda-mps-control sleep 120) < /dev/null > /dev/null 2>&1 & echo \$! > "$tmp/daemon.pid"
  exit 0
fi
read -r cmd
[ "\$cmd" = quit ] && kill "\$(cat "$tmp/daemon.pid")" && rm -f "\$CUDA_MPS_PIPE_DIRECTORY/control"
exit 0
FAKE
cat > "$tmp/build/mue" <<FAKE
#!/usr/bin/env bash
echo "\${CUDA_MPS_PIPE_DIRECTORY:-unset}" >> "$tmp/sweep-env"
echo "\${CUDA_VISIBLE_DEVICES:-unset} \$*" >> "$tmp/sweep-args"
if [ -n "\${FAKE_REFUSE:-}" ]; then echo "mue: error: 'runs/wd-lm/wd-lm-index.h5' indexes another grid"; exit 1; fi
FAKE
chmod +x "$tmp/bin/nvidia-cuda-mps-control" "$tmp/build/mue"

if ! command -v pgrep > /dev/null || ! command -v mkfifo > /dev/null; then
  echo "skipped: needs pgrep and mkfifo (as scripts/mps.sh does)"
  exit 0
fi
if pgrep -f nvidia-cuda-mps-control > /dev/null; then
  echo "skipped: an MPS control daemon is running on this machine"
  exit 0
fi
rm -rf /tmp/mue-mps
PATH="$tmp/bin:$PATH" MPS=1 DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out" RESULTS_DIR="$tmp/results" \
  bash "$repo/scripts/campaign.sh" wd-lm > "$tmp/campaign.out" 2>&1 || { cat "$tmp/campaign.out"; exit 1; }

fail=0
seen=$(cat "$tmp/sweep-env" 2>/dev/null || echo "no sweep ran")
if [ "$seen" != /tmp/mue-mps/pipe ]; then
  echo "FAILED: the sweep saw CUDA_MPS_PIPE_DIRECTORY=$seen, not /tmp/mue-mps/pipe"; fail=1
fi
if pgrep -f nvidia-cuda-mps-control > /dev/null; then
  echo "FAILED: the MPS daemon campaign.sh started is still running"; fail=1
  kill "$(cat "$tmp/daemon.pid")" 2>/dev/null || true
fi
grep -q "^mps: on" "$tmp/campaign.out" || { echo "FAILED: campaign.sh did not report MPS on"; fail=1; }
[ $fail = 0 ] || { cat "$tmp/campaign.out"; exit 1; }

FAKE_REFUSE=1 DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out2" RESULTS_DIR="$tmp/results" \
  bash "$repo/scripts/campaign.sh" wd-lm > "$tmp/campaign2.out" 2>&1 || { cat "$tmp/campaign2.out"; exit 1; }
grep -q "^mue: error: 'runs/wd-lm/wd-lm-index.h5' indexes another grid" "$tmp/out2/campaign.log" ||
  { echo "FAILED: the refused sweep's error is not in campaign.log"; fail=1; }
grep -q "^== wd-lm: [0-9]* s, mue sweep exit 1$" "$tmp/out2/campaign.log" ||
  { echo "FAILED: the refused sweep's exit status is not in campaign.log"; fail=1; }
[ $fail = 0 ] || { cat "$tmp/out2/campaign.log"; exit 1; }

# A machine of 4 GPUs (a fake nvidia-smi): the sweep gets all of them and PARALLEL on each (8 of wd-lm:2 x 4; the
# spec's own 6 on each, 24, without PARALLEL); both sweeps of the call share one --slots folder.
mkdir -p "$tmp/bin4"
cat > "$tmp/bin4/nvidia-smi" <<'FAKE'
#!/usr/bin/env bash
if [ "${1:-}" = -L ]; then for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done; fi
FAKE
chmod +x "$tmp/bin4/nvidia-smi"
rm -f "$tmp/sweep-args"
env -u CUDA_VISIBLE_DEVICES PATH="$tmp/bin4:$PATH" DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out3" \
  RESULTS_DIR="$tmp/results" bash "$repo/scripts/campaign.sh" wd-lm:2 wd-lm > "$tmp/campaign3.out" 2>&1 ||
  { cat "$tmp/campaign3.out"; exit 1; }
grep -q "^0,1,2,3 sweep experiments/sweeps/wd-lm.json --parallel 8 " "$tmp/sweep-args" ||
  { echo "FAILED: 4 GPUs, wd-lm:2: not CUDA_VISIBLE_DEVICES=0,1,2,3 and --parallel 8"; cat "$tmp/sweep-args"; fail=1; }
grep -q "^0,1,2,3 sweep experiments/sweeps/wd-lm.json --parallel 24 " "$tmp/sweep-args" ||
  { echo "FAILED: 4 GPUs, wd-lm (the spec's parallel 6): not --parallel 24"; cat "$tmp/sweep-args"; fail=1; }
grep -q "^gpus: 4 " "$tmp/out3/campaign.log" || { echo "FAILED: campaign.log does not say 4 GPUs"; fail=1; }
! grep -q -- "--estimates" "$tmp/sweep-args" || { echo "FAILED: --estimates without a results file"; fail=1; }
[ "$(grep -o -- " --slots [^ ]* " "$tmp/sweep-args" | wc -l)" = 2 ] &&
  [ "$(grep -o -- " --slots [^ ]* " "$tmp/sweep-args" | sort -u | wc -l)" = 1 ] ||
  { echo "FAILED: the call's two sweeps do not share one --slots folder"; cat "$tmp/sweep-args"; fail=1; }
slots_dir=$(grep -o -- " --slots [^ ]* " "$tmp/sweep-args" | head -1 | awk '{print $2}')
[ ! -e "$slots_dir" ] || { echo "FAILED: the call left its --slots folder $slots_dir behind"; fail=1; }
[ $fail = 0 ] || exit 1
# Results files of earlier sessions: a spec whose every point finished is not run; one whose grid grew (a second
# seed) runs only the new points; one from a spec that changed beyond its axes is refused in one line, not run.
mkdir -p "$tmp/res4"
python3 - "$repo" "$tmp/res4" <<'PY'
import json, sys
repo, out = sys.argv[1:]
spec = json.load(open(f"{repo}/experiments/sweeps/wd-lm.json"))
pts = [{"index": i, "name": f"wd-lm-{i:04d}", "status": "completed", "config": {"train": {"seed": 1, "data_seed": 1}},
        "coords": dict(zip(spec["axes"], vals))}
       for i, vals in enumerate(__import__("itertools").product(*spec["axes"].values()))]
json.dump({"format": "mue-sweep-results/1", "name": "wd-lm", "spec": spec, "points": pts}, open(f"{out}/wd-lm.json", "w"))
grown = dict(spec, axes={"seed": [1, 2], **spec["axes"]})
json.dump(grown, open(f"{out}/grown-spec.json", "w"))
other = dict(spec, overrides=spec["overrides"] + ["model.n_layers=2"])
json.dump({"name": "rivals-lm", "spec": other, "points": pts}, open(f"{out}/rivals-lm.json", "w"))
PY
rm -f "$tmp/sweep-args"
DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out4" RESULTS_DIR="$tmp/res4" \
  bash "$repo/scripts/campaign.sh" wd-lm rivals-lm > "$tmp/campaign4.out" 2>&1 || { cat "$tmp/campaign4.out"; exit 1; }
grep -q "^== wd-lm: every point finished in $tmp/res4/wd-lm.json" "$tmp/out4/campaign.log" ||
  { echo "FAILED: a finished spec was not skipped"; fail=1; }
grep -q "^== rivals-lm: not run: .*differ beyond their axes" "$tmp/out4/campaign.log" ||
  { echo "FAILED: a results file of another spec was not refused"; fail=1; }
[ ! -s "$tmp/sweep-args" ] || { echo "FAILED: a sweep ran"; cat "$tmp/sweep-args"; fail=1; }
only=$(python3 "$repo/experiments/figures/results_bundle.py" --missing "$tmp/res4/wd-lm.json" --spec "$tmp/res4/grown-spec.json")
[ "$only" = "$(seq -s, 60 119)" ] || { echo "FAILED: the grown grid's missing points are '$only', not 60-119"; fail=1; }
[ $fail = 0 ] || { cat "$tmp/out4/campaign.log"; exit 1; }
# A results file with points left: the sweep runs those, given the file for --deadline's estimates.
mkdir -p "$tmp/res5"
python3 - "$tmp/res4/wd-lm.json" "$tmp/res5/wd-lm.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for p in r["points"][50:]: p["status"] = "missing"
json.dump(r, open(sys.argv[2], "w"))
PY
rm -f "$tmp/sweep-args"
DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out5" RESULTS_DIR="$tmp/res5" \
  bash "$repo/scripts/campaign.sh" wd-lm > "$tmp/campaign5.out" 2>&1 || { cat "$tmp/campaign5.out"; exit 1; }
grep -q -- "--estimates $tmp/res5/wd-lm.json --only $(seq -s, 50 59)\$" "$tmp/sweep-args" ||
  { echo "FAILED: the sweep of a partial results file did not get --estimates and --only 50-59"; cat "$tmp/sweep-args"; fail=1; }
[ $fail = 0 ] || exit 1
# Earlier points on another kind of card (a fake nvidia-smi names this one): the log says so and the sweep runs;
# with SAME_CARD=1 the spec is not run; on the same kind nothing is said.
mkdir -p "$tmp/res6" "$tmp/bin6"
python3 - "$tmp/res5/wd-lm.json" "$tmp/res6/wd-lm.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for p in r["points"]: p["device"] = "NVIDIA H100 80GB HBM3"
json.dump(r, open(sys.argv[2], "w"))
PY
cat > "$tmp/bin6/nvidia-smi" <<'FAKE'
#!/usr/bin/env bash
# FAKE_CARD=fail: as nvidia-smi without a driver (its message on stdout, exit status 9)
[ "$FAKE_CARD" = fail ] && { echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9; }
case "$*" in -L) echo "GPU 0: ${FAKE_CARD} (UUID: GPU-0)" ;; *--query-gpu=name*) echo "${FAKE_CARD}" ;; esac
FAKE
chmod +x "$tmp/bin6/nvidia-smi"
card_run() {  # OUT-SUFFIX CARD [SAME_CARD]
  rm -f "$tmp/sweep-args"
  env -u CUDA_VISIBLE_DEVICES PATH="$tmp/bin6:$PATH" FAKE_CARD="$2" SAME_CARD="${3:-}" DEADLINE_S=120 \
    BUILD_DIR="$tmp/build" OUT="$tmp/out-$1" RESULTS_DIR="$tmp/res6" bash "$repo/scripts/campaign.sh" wd-lm \
    > "$tmp/campaign-$1.out" 2>&1 || { cat "$tmp/campaign-$1.out"; exit 1; }
}
card_run h200 "NVIDIA H200"
grep -q "^== wd-lm: its earlier points ran on NVIDIA H100 80GB HBM3, this call's card is NVIDIA H200 " "$tmp/out-h200/campaign.log" ||
  { echo "FAILED: another card's results are not named in campaign.log"; cat "$tmp/out-h200/campaign.log"; fail=1; }
grep -q -- "--only $(seq -s, 50 59)\$" "$tmp/sweep-args" || { echo "FAILED: the spec did not run on another card"; fail=1; }
card_run same "NVIDIA H200" 1
grep -q "^== wd-lm: not run (SAME_CARD=1)" "$tmp/out-same/campaign.log" && [ ! -s "$tmp/sweep-args" ] ||
  { echo "FAILED: SAME_CARD=1 ran a spec whose points ran on another card"; cat "$tmp/out-same/campaign.log"; fail=1; }
card_run h100 "NVIDIA H100 80GB HBM3" 1
! grep -q "earlier points ran on" "$tmp/out-h100/campaign.log" && [ -s "$tmp/sweep-args" ] ||
  { echo "FAILED: the same card's results were flagged or not run"; cat "$tmp/out-h100/campaign.log"; fail=1; }
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); del r["format"]; json.dump(r, open(sys.argv[2], "w"))' \
  "$tmp/res6/wd-lm.json" "$tmp/res6/noformat.json"
mv "$tmp/res6/wd-lm.json" "$tmp/res6/wd-lm.keep" && mv "$tmp/res6/noformat.json" "$tmp/res6/wd-lm.json"
card_run unread "NVIDIA H200" 1  # a results file cards.py cannot read: said so, and the spec runs
grep -q "^== wd-lm: its earlier points' cards not checked: .*not a readable sweep results file" \
  "$tmp/out-unread/campaign.log" && [ -s "$tmp/sweep-args" ] ||
  { echo "FAILED: an unreadable results file's cards were not reported unchecked"; cat "$tmp/out-unread/campaign.log"; fail=1; }
mv "$tmp/res6/wd-lm.keep" "$tmp/res6/wd-lm.json"
card_run fail fail 1  # no card known: nothing compared, the spec runs
! grep -q "earlier points" "$tmp/out-fail/campaign.log" && [ -s "$tmp/sweep-args" ] ||
  { echo "FAILED: a failing nvidia-smi was taken for a card"; cat "$tmp/out-fail/campaign.log"; fail=1; }
python3 - "$tmp/res6/wd-lm.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["points"][0]["device"] = "NVIDIA H200"
json.dump(r, open(sys.argv[1], "w"))
PY
card_run mixed "NVIDIA H100 80GB HBM3" 1  # earlier points on two kinds, this card one of them: flagged all the same
grep -q "^== wd-lm: its earlier points ran on NVIDIA H200, NVIDIA H100 80GB HBM3, this call's card is NVIDIA H100" \
  "$tmp/out-mixed/campaign.log" && [ ! -s "$tmp/sweep-args" ] ||
  { echo "FAILED: results already mixing cards were not flagged"; cat "$tmp/out-mixed/campaign.log"; fail=1; }
[ $fail = 0 ] || exit 1
# Sweeps overlap: the next spec's sweep starts once the one before has started its last point, not when it ends.
cat > "$tmp/build/mue" <<FAKE
#!/usr/bin/env bash
name=\$(basename "\$2" .json)
echo "start \$name" >> "$tmp/order"
echo "sweep \$name: every point started, 1 running"
sleep 2
echo "end \$name" >> "$tmp/order"
FAKE
DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out6" RESULTS_DIR="$tmp/results" \
  bash "$repo/scripts/campaign.sh" wd-lm rivals-lm > "$tmp/campaign6.out" 2>&1 || { cat "$tmp/campaign6.out"; exit 1; }
[ "$(cat "$tmp/order")" = "$(printf 'start wd-lm\nstart rivals-lm\nend wd-lm\nend rivals-lm')" ] ||
  { echo "FAILED: the sweeps did not overlap:"; cat "$tmp/order"; fail=1; }
grep -q "^== wd-lm: [0-9]* s$" "$tmp/out6/campaign.log" && grep -q "^== rivals-lm: [0-9]* s$" "$tmp/out6/campaign.log" ||
  { echo "FAILED: an overlapped sweep's end is not in campaign.log"; cat "$tmp/out6/campaign.log"; fail=1; }
grep -q "^sweep rivals-lm: every point started" "$tmp/out6/campaign.log" ||
  { echo "FAILED: a sweep's lines are not in campaign.log"; fail=1; }
# The same spec twice: its second sweep starts after its first has ended, never beside it.
rm -f "$tmp/order"
DEADLINE_S=120 BUILD_DIR="$tmp/build" OUT="$tmp/out7" RESULTS_DIR="$tmp/results" \
  bash "$repo/scripts/campaign.sh" wd-lm rivals-lm wd-lm > "$tmp/campaign7.out" 2>&1 || { cat "$tmp/campaign7.out"; exit 1; }
[ "$(grep -c "wd-lm" "$tmp/order")" = 4 ] && awk '/wd-lm/ { if ($1 == "start" && open) bad = 1; open = ($1 == "start") }
                                                 END { exit bad }' "$tmp/order" ||
  { echo "FAILED: two sweeps of one spec at once:"; cat "$tmp/order"; fail=1; }
[ $fail = 0 ] || exit 1
echo "campaign.sh MPS=1: the sweep saw the pipe directory; the daemon stopped; a refused sweep is logged; 4 GPUs used;"
echo "earlier results: a finished spec is skipped, another spec's results refused, a grown grid runs its new points,"
echo "a partial one its missing points with --estimates (another card's named; SAME_CARD=1 leaves it); sweeps overlap"
echo "at their ends and share --slots"
