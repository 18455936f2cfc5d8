#!/usr/bin/env python3
"""retnet-edge against llama.cpp on the `small` shape: a thin driver of `retnet-edge bench --baseline llama.cpp`.

    pip install -e '.[export,bench,llamacpp]'      # llama-cpp-python builds from its sdist (~10-15 min, 2 cores)
    python benchmarks/llamacpp_compare.py -o benchmarks/results/bench_small_llamacpp.json

Makes (once, in benchmarks/.work) the `small` preset with random weights and its ONNX int8 and int4 artifacts
(--no-validate: random weights are for speed only), then runs the bench with llama.cpp as the baseline:
the same-shape Llama GGUF at Q8_0 / Q4_0 / Q4_K_M, decode tok/s at each context, prompt tok/s at 512 and
time to first token, and the ratios from the one run (retnet_edge/bench/llamacpp.py says how it is timed).
Run it on an otherwise idle machine; `python benchmarks/results_md.py` renders the page afterwards.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "retnet_edge", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--contexts", default="0,512,4096")
    ap.add_argument("--tokens", default="64")
    ap.add_argument("--repeat", default="3")
    ap.add_argument("--quants", default="int8,int4")
    a = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    if not (WORK / "small").is_dir():
        cli("init-random", "--preset", "small", "-o", str(WORK / "small"))
    arts = []
    for q in a.quants.split(","):
        art = WORK / f"small-onnx-{q}"
        if not art.is_dir():
            cli("export", str(WORK / "small"), "--target", "onnx", "--quant", q, "--no-validate", "-o", str(art))
        arts.append(str(art))
    cli("bench", *arts, "--baseline", "llama.cpp", "--contexts", a.contexts, "--threads", a.threads,
        "--tokens", a.tokens, "--repeat", a.repeat, "--work-dir", str(WORK / "baselines"), "-o", a.output)


if __name__ == "__main__":
    main()
