#!/usr/bin/env bash
# Builds llama.cpp (through llama-cpp-python's source distribution on PyPI) into the tensorvisor
# cache, for the reference generator and the engine benchmark. Takes 10-20 minutes on 2 cores.
# The prebuilt wheels on PyPI need a newer glibc than Debian 12 has, hence the source build.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TENSORVISOR_CACHE:-$HOME/.cache/tensorvisor}"
TARGET="$CACHE/llama-cpp-python-$VERSION"
if [ -f "$TARGET/.complete" ]; then echo "$TARGET"; exit 0; fi
python3 -m pip install --quiet cmake ninja >&2
mkdir -p "$CACHE"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
nice -n 10 python3 -m pip install --quiet --no-cache-dir --target "$TARGET" \
  --no-binary llama-cpp-python "llama-cpp-python==$VERSION" >&2
touch "$TARGET/.complete"
echo "$TARGET"
