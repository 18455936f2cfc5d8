#!/usr/bin/env python3
"""ONNX decode and prefill speed of a preset at fp32 / int8 / int4, 1 and 2 threads (onnxruntime CPU).

Random weights: speed and memory only (quality numbers come from the demo model through
`retnet-edge export` + `retnet-edge eval`), so the artifacts are built with the exporter directly and
not gated on top-1 agreement. Each (quant, threads) cell runs in a fresh process.

    python benchmarks/bench_onnx.py --preset small          # writes benchmarks/results/onnx_small.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    build_preset_artifact,
    json_from,
    machine,
    rss_mib,
    time_calls,
    write_result,
)


def build(preset: str, quant: str, out: Path) -> None:
    build_preset_artifact(preset, "onnx", quant, out)


def measure(artifact: Path, threads: int, steps: int, prompt: int) -> dict:
    """Runs in a child process: one session, decode latency, prefill vs step-loop throughput, RSS."""
    import numpy as np

    from retnet_edge.runtimes import load_runner

    base = rss_mib()
    r = load_runner(artifact, threads=threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, r.cfg.vocab_size, prompt).tolist()
    r.prefill(ids[:8])
    decode = time_calls(lambda: r.step(int(rng.integers(0, r.cfg.vocab_size))), steps)
    r.reset()
    r.prefill(ids[:128])  # load and warm the prefill graph
    pre = time_calls(lambda: (r.reset(), r.prefill(ids)), 3, warmup=1)
    loop = time_calls(lambda: (r.reset(), [r.step(t) for t in ids]), 1, warmup=0)
    return {"threads": threads, "decode": decode, "decode_tok_s": round(1e3 / decode["median_ms"], 1),
            "prefill_tok_s": round(prompt / pre["median_ms"] * 1e3, 1),
            "step_loop_tok_s": round(prompt / loop["median_ms"] * 1e3, 1),
            "prefill_speedup": round(loop["median_ms"] / pre["median_ms"], 2),
            "rss_mib_over_import": round(rss_mib() - base, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--quants", default="fp32,int8,int4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--work", type=Path, default=None, help="Keep artifacts here (default: a temp dir).")
    ap.add_argument("--build-only", action="store_true", help="Build the artifacts into --work and stop.")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # child process
        print(json.dumps(measure(args.measure, int(args.threads), args.steps, args.prompt)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    results = {"preset": args.preset, "machine": machine(), "steps": args.steps, "prompt_tokens": args.prompt,
               "runs": []}
    for quant in args.quants.split(","):
        art = work / f"{args.preset}-{quant}"
        if not (art / "model.onnx").exists():
            build(args.preset, quant, art)
        if args.build_only:
            continue
        size = sum(f.stat().st_size for f in art.iterdir() if f.suffix in (".onnx", ".bin", ".data"))
        for threads in args.threads.split(","):
            row = {"quant": quant, "artifact_mib": round(size / 2**20, 1),
                   **json_from([sys.executable, __file__, "--measure", art, "--threads", threads,
                                "--steps", args.steps, "--prompt", args.prompt])}
            results["runs"].append(row)
            print(f"{quant:5} {threads} thr: decode {row['decode']['median_ms']:7.2f} ms/tok "
                  f"(p90 {row['decode']['p90_ms']:.2f}), prefill {row['prefill_tok_s']:8.1f} tok/s vs step loop "
                  f"{row['step_loop_tok_s']:6.1f} tok/s ({row['prefill_speedup']}x), artifact "
                  f"{row['artifact_mib']} MiB, RSS +{row['rss_mib_over_import']} MiB", flush=True)
    if not args.build_only:
        print(f"wrote {write_result(f'onnx_{args.preset}', results)}")


if __name__ == "__main__":
    main()
