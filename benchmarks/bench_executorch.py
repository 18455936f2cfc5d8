#!/usr/bin/env python3
"""ExecuTorch decode latency of a preset at fp32 / int8 (8da8w) / int4 (8da4w): C++ harness and Python.

Random weights (speed only): programs are lowered with the exporter's stages directly, without the
quality gate. Each cell runs in a fresh process: `benchmarks/device/build/retnet_bench` (build it with
benchmarks/device/build.sh) and the Python runtime through `retnet_edge.runtimes.executorch`.

    python benchmarks/bench_executorch.py --preset small     # -> benchmarks/results/executorch_small.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    build_preset_artifact,
    json_from,
    machine,
    rss_mib,
    time_calls,
    write_result,
)

HARNESS = HERE / "device" / "build" / "retnet_bench"


def build(preset: str, quant: str, out: Path) -> None:
    build_preset_artifact(preset, "executorch", quant, out)


def measure_python(artifact: Path, threads: int, steps: int) -> dict:
    from retnet_edge.runtimes import load_runner

    base = rss_mib()
    r = load_runner(artifact, threads=threads)
    r.prefill([1, 2, 3])
    t = time_calls(lambda: r.step(5), steps)
    return {"threads": threads, "decode": t, "rss_mib_over_import": round(rss_mib() - base, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--quants", default="fp32,int8,int4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_python(args.measure, int(args.threads), args.steps)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_et_"))
    res = {"preset": args.preset, "machine": machine(), "steps": args.steps, "runs": []}
    for quant in args.quants.split(","):
        art = work / f"{args.preset}-{quant}"
        if not (art / "model.pte").exists():
            build(args.preset, quant, art)
        if args.build_only:
            continue
        for threads in args.threads.split(","):
            row = {"quant": quant, "pte_mib": round((art / "model.pte").stat().st_size / 2**20, 1),
                   "delegation": json.loads((art / "delegation.json").read_text())["partitions"]}
            if HARNESS.exists():
                row["cpp"] = json_from([HARNESS, art / "model.pte", args.steps, threads])
            row["python"] = json_from([sys.executable, __file__, "--measure", art, "--threads", threads,
                                       "--steps", args.steps])
            res["runs"].append(row)
            cpp = row.get("cpp", {})
            print(f"{quant:5} {threads} thr: C++ {cpp.get('median_ms', float('nan')):7.2f} ms/tok "
                  f"(RSS {cpp.get('peak_rss_mib', 0):.0f} MiB), Python {row['python']['decode']['median_ms']:7.2f} "
                  f"ms/tok, .pte {row['pte_mib']} MiB, {row['delegation']} partition(s)", flush=True)
    if not args.build_only:
        print(f"wrote {write_result(f'executorch_{args.preset}', res)}")


if __name__ == "__main__":
    main()
