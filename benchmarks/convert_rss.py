#!/usr/bin/env python3
"""Peak memory of `retnet-edge convert` on a 1.3B-shaped fla checkpoint (random bf16 weights).

Writes the checkpoint with the tests' fla fixture writer (streamed, so writing it is cheap too), then
runs the conversion in a child process and reads its peak RSS (ru_maxrss); an import-only child gives
the interpreter + torch baseline. Target: peak RSS <= 1.5 x the checkpoint's file size.

    python benchmarks/convert_rss.py                 # fla-hub/retnet-1.3B shape: 24 layers, d 2048
    python benchmarks/convert_rss.py --layers 4      # the CI-sized variant
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]


def child_peak_mib(cmd: list[str]) -> float:
    """Peak RSS of one child process (each measurement runs in its own helper process)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024


def measure(layers: int = 24, work: Path | None = None, fused: bool = False) -> dict:
    import torch
    from foreign import write_fla

    work = Path(work or tempfile.mkdtemp(prefix="convert_rss_"))
    src, out = work / "fla", work / "native"
    if not (src / "config.json").exists():
        write_fla(src, vocab=32000, hidden=2048, heads=8, layers=layers, inter=2816, fused=fused,
                  dtype=torch.bfloat16, std=0.02)
    file_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    base = child_peak_mib([sys.executable, "-c", "import retnet_edge.checkpoints.convert"])
    peak = child_peak_mib([sys.executable, "-m", "retnet_edge", "convert", str(src), "-o", str(out), "--force"])
    return {"layers": layers, "file_mib": round(file_bytes / 2**20, 1), "peak_rss_mib": round(peak, 1),
            "import_baseline_mib": round(base, 1), "peak_over_file": round(peak / (file_bytes / 2**20), 3),
            "delta_over_file": round((peak - base) / (file_bytes / 2**20), 3),
            "output_mib": round((out / "model.safetensors").stat().st_size / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--fused", action="store_true", help="2024-era fused gate_proj layout")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    r = measure(args.layers, args.work, args.fused)
    print(json.dumps(r, indent=2))
    from common import write_result

    if args.layers == 24:
        write_result("convert_rss_1.3b", r)


if __name__ == "__main__":
    main()
