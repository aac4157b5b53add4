#!/usr/bin/env bash
# Configures (once) and builds fedlora into build/. Usage: ops/build.sh [cmake --build args...]
# e.g. `ops/build.sh --target fedlora`. BUILD_DIR overrides the build directory.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=$(nproc 2>/dev/null || echo 2)
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  echo "configuring $build (a first build takes a few minutes: LibTorch is heavy to compile)"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build.configure.log" 2>&1 || {
    cat "$build.configure.log" >&2
    exit 1
  }
fi
cmake --build "$build" --parallel "$jobs" "$@"
