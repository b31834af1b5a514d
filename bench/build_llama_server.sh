#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp sources vendored in the llama-cpp-python
# sdist (the same llama.cpp our worker runs), into a cache outside the clone.
# Prints the binary's path on success; exits non-zero with a reason on failure.
set -euo pipefail
PY=${PY:-.venv/bin/python}
VERSION=$($PY -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
CACHE=${LLAMAGRID_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamagrid/bench}
DEST=$CACHE/llama.cpp-$VERSION
BIN=$DEST/build/bin/llama-server
if [[ -x $BIN ]]; then echo "$BIN"; exit 0; fi
for tool in cmake c++; do
  command -v $tool >/dev/null || { echo "cannot build llama-server: $tool is not installed" >&2; exit 3; }
done
mkdir -p "$CACHE"
SDIST=$(ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)
if [[ -z $SDIST ]]; then
  $PY -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE" "llama-cpp-python==$VERSION" >&2
  SDIST=$CACHE/llama_cpp_python-$VERSION.tar.gz
fi
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
tar -xzf "$SDIST" -C "$DEST.tmp" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$DEST.tmp" -B "$DEST.tmp/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$DEST.tmp/build" --target llama-server -j "$(nproc)" >&2
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
# Static libraries, so the binary still runs after the move.
echo "$BIN"
