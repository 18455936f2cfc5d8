#!/usr/bin/env bash
# Regenerate benchmarks/results/bench_*.json, the plots and benchmarks/RESULTS.md on this machine:
#   bash benchmarks/run_bench.sh            (about 30 min on 2 cores; run it on an otherwise idle machine)
# Demo model: its validated artifacts. `small` preset (270M, random weights): exported with
# --no-validate (random weights are for speed and memory only; the manifests say "skipped").
set -euo pipefail
cd "$(dirname "$0")/.."
work=benchmarks/.work
res=benchmarks/results
mkdir -p "$work" "$res"
bash benchmarks/device/build.sh python >/dev/null 2>&1 || echo "C++ harness not built: ExecuTorch runs in Python" >&2
for q in int8 int4; do
  [ -d "$work/demo-onnx-$q" ] || retnet-edge export demo --target onnx --quant $q -o "$work/demo-onnx-$q"
  [ -d "$work/demo-pte-$q" ] || retnet-edge export demo --target executorch --quant $q -o "$work/demo-pte-$q"
done
[ -d "$work/small" ] || retnet-edge init-random --preset small -o "$work/small"
for q in int8 int4; do
  [ -d "$work/small-onnx-$q" ] || retnet-edge export "$work/small" --target onnx --quant $q --no-validate -o "$work/small-onnx-$q"
done
[ -d "$work/small-pte-int4" ] || retnet-edge export "$work/small" --target executorch --quant int4 --no-validate -o "$work/small-pte-int4"
retnet-edge bench "$work"/demo-onnx-int8 "$work"/demo-onnx-int4 "$work"/demo-pte-int8 "$work"/demo-pte-int4 \
  --contexts 0,512,2048,8192 --threads 1,2 --tokens 128 --repeat 5 --work-dir "$work/baselines" \
  -o "$res/bench_demo.json" --plot "$res/plots/demo"
retnet-edge bench "$work"/small-onnx-int8 "$work"/small-onnx-int4 "$work"/small-pte-int4 \
  --contexts 0,4096,8192 --threads 1 --tokens 64 --repeat 3 --work-dir "$work/baselines" \
  -o "$res/bench_small.json" --plot "$res/plots/small"
python benchmarks/results_md.py $(ls "$res"/bench_small_xeon.json 2>/dev/null) "$res/bench_demo.json" "$res/bench_small.json" $(ls "$res"/bench_small_runtime.json 2>/dev/null) > benchmarks/RESULTS.md
# issue 11/15 comparisons (their own commands, see each script's docstring): benchmarks/runtime_ab.py,
# benchmarks/llamacpp_compare.py (in a llama-cpp-python venv), benchmarks/genai_compare.py
echo "wrote benchmarks/RESULTS.md" >&2
