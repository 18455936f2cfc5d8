#!/usr/bin/env bash
# Issue 11's measurements in one go, on an otherwise idle machine (~8 min on 2 cores):
#   bash benchmarks/run_runtime.sh BEFORE_TREE [LLAMA_VENV] [PINGPONG_TREE]
# BEFORE_TREE: a checkout of the commit to compare against (git worktree add /tmp/before <commit>);
# LLAMA_VENV: a venv with llama-cpp-python + gguf (see benchmarks/llamacpp_compare.py; default /tmp/llvenv);
# PINGPONG_TREE (optional): a checkout of 012e8b9, the last runner with two state buffers on every graph
# (model_fused.onnx at 1 thread, model.onnx at 2): its `pingpong` rows isolate the in-place state update.
# `before` rows run the old tree's runner (it decodes with model.onnx, the MatMul/Mul/Add chain); `after` rows
# this tree's, which decodes with model_fused.onnx, the state in place; `graph=chain` forces model.onnx.
# ExecuTorch variants (built by hand with older commits, when present): small-pte-int4-unfolded (reset as a
# separate pass), -copyback (state written back by copy_), -flat (in place, one buffer per layer).
# Writes benchmarks/results/{runtime_ab_xeon,llamacpp_xeon,bench_small_xeon}.json; RESULTS.md is then
# regenerated with benchmarks/results_md.py (the last line of run_bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1
llvenv=${2:-/tmp/llvenv}
pingpong=()
if [ -n "${3:-}" ]; then
  pingpong=("pingpong-int8=benchmarks/.work/small-onnx-int8:before=$3" "pingpong-int4=benchmarks/.work/small-onnx-int4:before=$3"
            "pingpong-int8-2t=benchmarks/.work/small-onnx-int8:before=$3,threads=2"
            "pingpong-int4-2t=benchmarks/.work/small-onnx-int4:before=$3,threads=2")
fi
work=benchmarks/.work
res=benchmarks/results
[ -d "$work/small" ] || retnet-edge init-random --preset small -o "$work/small"
for q in int8 int4; do
  [ -d "$work/small-onnx-$q" ] || retnet-edge export "$work/small" --target onnx --quant $q --no-validate -o "$work/small-onnx-$q"
done
[ -d "$work/small-onnx-int4-g128" ] || retnet-edge export "$work/small" --target onnx --quant int4 --group-size 128 \
  --no-validate -o "$work/small-onnx-int4-g128"
[ -d "$work/small-onnx-int4-pw" ] || retnet-edge export "$work/small" --target onnx --quant int4 --prefill-weights int8 \
  --no-validate -o "$work/small-onnx-int4-pw"
[ -d "$work/small-pte-int4" ] || retnet-edge export "$work/small" --target executorch --quant int4 --no-validate -o "$work/small-pte-int4"
bash benchmarks/device/build.sh python >/dev/null
i4=$work/small-onnx-int4 i8=$work/small-onnx-int8
# MatMulNBits-only artifacts (int8 blockwise, int4 with a MatMulNBits int8 head), exported at commit 3b05808
# before the int8 GEMM: the `before` rows run them, and the `nbits` rows run them with this tree's runner
old4=$work/small-onnx-int4-nbitshead old8=$work/small-onnx-int8-nbits
[ -d "$old4" ] || old4=$i4
[ -d "$old8" ] || old8=$i8
python benchmarks/runtime_ab.py \
  "before-int4=$old4:before=$before" "after-int4=$i4" "after-int4-chain=$i4:graph=chain" "nbits-int4=$old4" \
  "before-int8=$old8:before=$before" "after-int8=$i8" "after-int8-chain=$i8:graph=chain" "nbits-int8=$old8" \
  "after-int4-g128=$work/small-onnx-int4-g128" "after-int4-pw=$work/small-onnx-int4-pw" \
  "before-int4-2t=$old4:before=$before,threads=2" "after-int4-2t=$i4:threads=2" "after-int4-2t-chain=$i4:threads=2,graph=chain" \
  "before-int8-2t=$old8:before=$before,threads=2" "after-int8-2t=$i8:threads=2" "after-int8-2t-chain=$i8:threads=2,graph=chain" \
  "${pingpong[@]}" \
  --rounds 3 --note "$(git -C "$before" log -1 --format='`before`: commit %h (%s)' | cut -c1-160) on the MatMulNBits-only artifacts; \`after\`: $(git log -1 --format=%h) + working tree (model_fused.onnx, the state in place; graph=chain: model.onnx, two buffers; int8 = MatMulInteger); \`nbits\`: this runner on the MatMulNBits-only artifacts; \`pingpong\`: commit 012e8b9's runner (two state buffers) on this tree's artifacts." \
  -o "$res/runtime_ab_xeon.json"
"$llvenv/bin/python" benchmarks/llamacpp_compare.py --contexts 0 --threads 1,2 -o "$res/llamacpp_xeon.json"
pte=("$work"/small-pte-int4)
for v in flat copyback unfolded; do [ -d "$work/small-pte-int4-$v" ] && pte+=("$work/small-pte-int4-$v"); done
retnet-edge bench "$i8" "$i4" "$work"/small-onnx-int4-g128 "$work"/small-onnx-int4-pw "${pte[@]}" \
  --contexts 0,512 --threads 1,2 --tokens 64 --repeat 3 --baseline none -o "$res/bench_small_xeon.json"
