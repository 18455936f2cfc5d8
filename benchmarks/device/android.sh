#!/usr/bin/env bash
# Cross-build retnet_bench for Android arm64 and run it on a phone over adb.
#
# NOT RUN in this project's CI or development machines (no NDK, no device there); it follows ExecuTorch's
# documented Android CMake flow. Needs: an ExecuTorch source checkout at the version the .pte was made with
# (v1.5.1), the Android NDK (r27+), cmake >= 3.24, adb with a device attached.
#
#   EXECUTORCH_SRC=~/executorch ANDROID_NDK=~/android-ndk-r27c benchmarks/device/android.sh model.pte [steps] [threads]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${EXECUTORCH_SRC:?set EXECUTORCH_SRC to an executorch v1.5.1 source checkout (git submodule update --init)}"
: "${ANDROID_NDK:?set ANDROID_NDK to the Android NDK directory}"
pte=${1:?usage: android.sh model.pte [steps] [threads]}
steps=${2:-128}
threads=${3:-4}
build=$here/build-android
toolchain=$ANDROID_NDK/build/cmake/android.toolchain.cmake

# 1. ExecuTorch runtime, XNNPACK backend, optimized + quantized kernels, Module and tensor extensions.
cmake -S "$EXECUTORCH_SRC" -B "$build/executorch" -DCMAKE_TOOLCHAIN_FILE="$toolchain" \
  -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-26 -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$build/install" \
  -DEXECUTORCH_BUILD_XNNPACK=ON -DEXECUTORCH_BUILD_KERNELS_OPTIMIZED=ON -DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON \
  -DEXECUTORCH_BUILD_EXTENSION_MODULE=ON -DEXECUTORCH_BUILD_EXTENSION_DATA_LOADER=ON \
  -DEXECUTORCH_BUILD_EXTENSION_TENSOR=ON -DEXECUTORCH_BUILD_EXTENSION_FLAT_TENSOR=ON
cmake --build "$build/executorch" -j"$(nproc)" --target install

# 2. The harness, statically linked; registration libraries whole-archived so their kernels register.
inst=$build/install
"$ANDROID_NDK"/toolchains/llvm/prebuilt/*/bin/aarch64-linux-android26-clang++ -std=c++17 -O2 \
  "$here/../../retnet_edge/bench/retnet_bench.cpp" -o "$build/retnet_bench" -I"$inst/include" \
  -I"$inst/include/executorch/runtime/core/portable_type/c10" -DC10_USING_CUSTOM_GENERATED_MACROS \
  -L"$inst/lib" -Wl,--whole-archive -lxnnpack_backend -loptimized_native_cpu_ops_lib -lquantized_ops_lib \
  -Wl,--no-whole-archive -lextension_module_static -lextension_data_loader -lextension_tensor \
  -lextension_flat_tensor -loptimized_kernels -lquantized_kernels -lportable_kernels -lkernels_util_all_deps \
  -lXNNPACK -lxnnpack-microkernels-prod -lkleidiai -lcpuinfo -lpthreadpool -lextension_threadpool -lexecutorch \
  -lexecutorch_core -llog -static-libstdc++

# 3. Run on the device.
adb push "$build/retnet_bench" /data/local/tmp/retnet_bench
adb push "$pte" /data/local/tmp/model.pte
adb shell "chmod +x /data/local/tmp/retnet_bench && /data/local/tmp/retnet_bench /data/local/tmp/model.pte $steps $threads"
