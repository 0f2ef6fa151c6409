#!/usr/bin/env bash
# Installs the peer allocators (Debian's packages) when missing, then runs the
# C core microbenchmark. Usage: bash bench/c/run.sh [--json]
set -euo pipefail
cd "$(dirname "$0")"
if ! ldconfig -p | grep -q libmimalloc.so.2 || ! ldconfig -p | grep -q libjemalloc.so.2; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libjemalloc-dev libmimalloc-dev >/dev/null
  else
    echo "note: run as root, or install libjemalloc-dev and libmimalloc-dev, to compare against them" >&2
  fi
fi
make -s build/bench_core
./build/bench_core "$@"
