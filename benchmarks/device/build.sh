#!/usr/bin/env bash
# Build retnet_bench on Linux/macOS against the headers and shared libraries of the executorch pip wheel.
# Plain compiler flags: the wheel's CMake targets need CMake >= 3.28 (this machine has 3.25).
#   benchmarks/device/build.sh [PYTHON]          -> benchmarks/device/build/retnet_bench
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-python3}
et=$("$py" -c 'import executorch, os; print(list(executorch.__path__)[0])')
mkdir -p "$here/build"
# Registration libraries (kernels, XNNPACK backend) register themselves in static constructors:
# keep them linked although no symbol is referenced (--no-as-needed).
${CXX:-g++} -std=c++17 -O2 "$here/retnet_bench.cpp" -o "$here/build/retnet_bench" \
  -I"$et/include" -I"$et/include/executorch/runtime/core/portable_type/c10" \
  -DC10_USING_CUSTOM_GENERATED_MACROS -DET_USE_THREADPOOL=1 \
  -L"$et/lib" -Wl,-rpath,"$et/lib" -Wl,--no-as-needed \
  -lexecutorch -lexecutorch_backend_xnnpack -lexecutorch_kernels_optimized -lexecutorch_kernels_quantized \
  -lexecutorch_threadpool -Wl,--as-needed -lpthread
echo "$here/build/retnet_bench"
