#!/usr/bin/env bash
# Issue 11's measurements in one go, on an otherwise idle machine (~15 min on 2 cores):
#   bash benchmarks/run_runtime.sh BEFORE_TREE [LLAMA_VENV]
# BEFORE_TREE: a checkout of the commit to compare against (git worktree add /tmp/before <commit>);
# LLAMA_VENV: a venv with llama-cpp-python + gguf (see benchmarks/llamacpp_compare.py; default /tmp/llvenv).
# Writes benchmarks/results/{runtime_ab_xeon,llamacpp_xeon,bench_small_xeon}.json; RESULTS.md is then
# regenerated with benchmarks/results_md.py (the last line of run_bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1
llvenv=${2:-/tmp/llvenv}
work=benchmarks/.work
res=benchmarks/results
[ -d "$work/small" ] || retnet-edge init-random --preset small -o "$work/small"
for q in int8 int4; do
  [ -d "$work/small-onnx-$q" ] || retnet-edge export "$work/small" --target onnx --quant $q --no-validate -o "$work/small-onnx-$q"
done
[ -d "$work/small-onnx-int4-g128" ] || retnet-edge export "$work/small" --target onnx --quant int4 --group-size 128 \
  --no-validate -o "$work/small-onnx-int4-g128"
[ -d "$work/small-pte-int4" ] || retnet-edge export "$work/small" --target executorch --quant int4 --no-validate -o "$work/small-pte-int4"
bash benchmarks/device/build.sh python >/dev/null
python benchmarks/runtime_ab.py \
  "before-int4=$work/small-onnx-int4:before=$before" "after-int4=$work/small-onnx-int4" \
  "before-int8=$work/small-onnx-int8:before=$before" "after-int8=$work/small-onnx-int8" \
  "after-int4-g128=$work/small-onnx-int4-g128" \
  "before-int4-2t=$work/small-onnx-int4:before=$before,threads=2" "after-int4-2t=$work/small-onnx-int4:threads=2" \
  --rounds 3 --note "$(git -C "$before" log -1 --format='`before`: commit %h (%s)' | cut -c1-160); \`after\`: $(git log -1 --format=%h) + working tree." \
  -o "$res/runtime_ab_xeon.json"
"$llvenv/bin/python" benchmarks/llamacpp_compare.py --contexts 0 --threads 1,2 -o "$res/llamacpp_xeon.json"
retnet-edge bench "$work"/small-onnx-int8 "$work"/small-onnx-int4 "$work"/small-onnx-int4-g128 "$work"/small-pte-int4 $(ls -d "$work"/small-pte-int4-unfolded 2>/dev/null) \
  --contexts 0,512 --threads 1 --tokens 64 --repeat 3 --baseline none -o "$res/bench_small_xeon.json"
