#!/usr/bin/env bash
# The CPU tests under AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/, CUDA off, -O1). Any finding
# fails the test that triggered it.
# Usage: bash scripts/sanitize.sh [--fast] [FILTER...]
#   --fast     build and run only mue_tests_fast, the part of the suite CI runs (CMakeLists.txt says which files)
#   FILTER...  passed to the test program (a Catch2 filter, e.g. "[sweep]")
set -euo pipefail
cd "$(dirname "$0")/.."
tests=mue_tests
if [ "${1:-}" = --fast ]; then
  tests=mue_tests_fast
  shift
fi
gen=""
command -v ninja >/dev/null && gen="-G Ninja"
if [ ! -f build-asan/CMakeCache.txt ]; then
  cmake -S . -B build-asan $gen -DCMAKE_BUILD_TYPE=Release -DMUE_SANITIZE=ON -DMUE_CUDA=OFF >/dev/null
fi
cmake --build build-asan -j "$(nproc)" --target $tests
# OpenMP's runtime keeps thread stacks ASan cannot see through; leaks of the process's lifetime are not errors here.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd build-asan && OMP_NUM_THREADS=2 ./$tests "$@"
