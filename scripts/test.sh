#!/usr/bin/env bash
# Set up, build and run the whole test suite (GPU tests skip themselves where there is no GPU).
# With MUE_CI_SANITIZE=1 (set by .ci/run) also the sanitized fast subset: scripts/sanitize.sh --fast.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
(cd build && ctest --output-on-failure "$@")
if [ "${MUE_CI_SANITIZE:-0}" = 1 ]; then
  bash scripts/sanitize.sh --fast
fi
