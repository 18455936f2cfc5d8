#!/usr/bin/env bash
# Build the C++ ExecuTorch harness (retnet_edge/bench/retnet_bench.cpp) against the installed executorch wheel,
# as `retnet-edge bench --runtime cpp` does on first use; prints its path (in ~/.cache/retnet-edge).
#   benchmarks/device/build.sh [PYTHON]
set -euo pipefail
"${1:-python3}" -c 'from retnet_edge.bench.tools import build_harness; print(build_harness())'
