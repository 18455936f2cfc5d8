#!/usr/bin/env bash
# Measure this machine and regenerate benchmarks/RESULTS.md and the README's block of figures:
#   bash benchmarks/run_bench.sh            (about 30 min on 2 cores; run it on an otherwise idle machine)
# `small` preset (270M, random weights), exported with --no-validate (random weights are for speed and memory
# only; the manifests say "skipped"): ONNX int8, int4 and int4 with int8 prompt weights, against llama.cpp on a
# same-shape Llama (extra `llamacpp`) at 1 and 2 threads; the JSON is named after the machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
work=benchmarks/.work
res=benchmarks/results
mkdir -p "$work" "$res"
[ -d "$work/small" ] || retnet-edge init-random --preset small -o "$work/small"
for q in int8 int4; do
  [ -d "$work/small-onnx-$q" ] || retnet-edge export "$work/small" --target onnx --quant $q --no-validate -o "$work/small-onnx-$q"
done
[ -d "$work/small-onnx-int4-pp8" ] || retnet-edge export "$work/small" --target onnx --quant int4 --prefill-weights int8 \
  --no-validate -o "$work/small-onnx-int4-pp8"
cpu=$(python -c "from retnet_edge.bench.machine import machine_facts as m; import re; print(re.sub(r'[^a-z0-9]+', '_', m()['cpu'].lower()).strip('_'))")
retnet-edge bench "$work"/small-onnx-int8 "$work"/small-onnx-int4 "$work"/small-onnx-int4-pp8 \
  --baseline llama.cpp --contexts 0,512,4096 --threads 1,2 --tokens 64 --repeat 3 --work-dir "$work/baselines" \
  -o "$res/bench_small_$cpu.json" --plot "$res/plots/small"
python benchmarks/results_md.py
