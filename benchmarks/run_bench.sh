#!/usr/bin/env bash
# Measure this machine and regenerate benchmarks/RESULTS.md and the README's block of figures:
#   bash benchmarks/run_bench.sh            (about 40 min on 2 cores; run it on an otherwise idle machine)
# `small` preset (270M, random weights), exported with --no-validate (random weights are for speed and memory
# only; the manifests say "skipped"). Three suites, each a JSON named for it and the machine's CPU:
#   bench_small_<cpu>           ONNX int8, int4 and int4 with int8 prompt weights against llama.cpp on a same-shape
#                               Llama (extra `llamacpp`) and the GQA Transformer baseline, contexts 0-4096, 1 and 2 threads
#   bench_small_variants_<cpu>  the levers against the default int4 in the same run: int4 LM head, group 128,
#                               ExecuTorch int4 (the C++ harness when built: decode and a token-by-token prompt), context 0 and 512
#   bench_small_16k_<cpu>       flatness to 16,384 tokens (int4, 1 thread)
set -euo pipefail
cd "$(dirname "$0")/.."
work=benchmarks/.work
res=benchmarks/results
mkdir -p "$work" "$res"
# --int4-method rtn: random weights have nothing for calibration to find, and rtn writes the same bytes and kernels
ex() { [ -d "$work/$1" ] || retnet-edge export "$work/small" --no-validate --int4-method rtn -o "$work/$1" "${@:2}"; }
[ -d "$work/small" ] || retnet-edge init-random --preset small -o "$work/small"
ex small-onnx-int8 --target onnx --quant int8
ex small-onnx-int4 --target onnx --quant int4
ex small-onnx-int4-pp8 --target onnx --quant int4 --prefill-weights int8
ex small-onnx-int4-head4 --target onnx --quant int4 --lm-head int4
ex small-onnx-int4-g128 --target onnx --quant int4 --group-size 128
ex small-pte-int4 --target executorch --quant int4
cpu=$(python -c "from retnet_edge.bench.machine import machine_facts as m; import re; print(re.sub(r'[^a-z0-9]+', '_', m()['cpu'].lower()).strip('_'))")
retnet-edge bench "$work"/small-onnx-int8 "$work"/small-onnx-int4 "$work"/small-onnx-int4-pp8 \
  --baseline llama.cpp,transformer --contexts 0,256,512,4096 --threads 1,2 --tokens 64 --repeat 3 \
  --work-dir "$work/baselines" -o "$res/bench_small_$cpu.json" --plot "$res/plots/small"
retnet-edge bench "$work"/small-onnx-int4 "$work"/small-onnx-int4-head4 "$work"/small-onnx-int4-g128 "$work"/small-pte-int4 \
  --baseline none --contexts 0,512 --threads 1,2 --tokens 64 --repeat 3 -o "$res/bench_small_variants_$cpu.json"
retnet-edge bench "$work"/small-onnx-int4 --baseline none --contexts 0,16384 --threads 1 --tokens 64 --repeat 3 \
  -o "$res/bench_small_16k_$cpu.json"
python benchmarks/results_md.py
