#!/usr/bin/env python3
"""Peak resident memory and wall time of `retnet-edge export`, per stage, for a random-weight preset.

A bf16 checkpoint of the preset is written once (`init-random --dtype bf16`), then each export runs in a
child process whose resident memory (with its children) is sampled every 0.1 s with psutil; its stderr
lines are timestamped, so every sample is attributed to the stage the exporter had announced last
(load, trace / lower, quantize, validate, write). The gate runs as in a user's export (no
--no-validate): whether a healthy export of random weights passes it is part of what is measured.

    python benchmarks/export_memory.py --preset small --targets onnx:int8,onnx:int4,executorch:int4
    python benchmarks/export_memory.py --preset 1.3b --targets onnx:int4 --out benchmarks/results/export_memory_1.3b.json

Targets of issue 12: 1.3b -> ONNX int4 and ExecuTorch 8da4w each with peak RSS <= 8 GB and <= 20 min on the
2-core machine, gate included; a 7B shape -> ONNX int4 <= 12 GB (`--preset 7b`; its bf16 checkpoint is 17.8 GB
on disk). Exports stream by default (one layer resident); `--whole` measures the whole-model path.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# the stage a sample belongs to: the last one announced on stderr ("load" until the exporter says "loaded")
STAGES = (("loaded ", "plan"), ("tracing", "trace"), ("writing the", "stamp + quantize + write"),
          ("read and quantized", "read + quantize"), ("lowering", "lower"), ("quantizing", "quantize"),
          ("validating", "validate"), ("wrote ", "write"))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_export(cmd: list[str]) -> dict:
    """Run one export; per stage: seconds and peak RSS (MiB); the gate's verdict and the exit code."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    stage = ["load"]
    marks: list[tuple[float, str]] = [(0.0, "load")]
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip())
            for key, name in STAGES:
                if key in line and name != stage[0]:
                    stage[0] = name
                    marks.append((time.time() - t0, name))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    peaks: dict[str, int] = {}
    while proc.poll() is None:
        rss = tree_rss(ps)
        peaks[stage[0]] = max(peaks.get(stage[0], 0), rss)
        time.sleep(0.1)
    reader.join(5)
    wall = time.time() - t0
    stdout = proc.stdout.read()
    bounds = [t for t, _ in marks[1:]] + [wall]
    seconds: dict[str, float] = {}
    for (start, name), end in zip(marks, bounds):  # a stage may come back (step graph, then prefill graph)
        seconds[name] = seconds.get(name, 0.0) + end - start
    per_stage = {name: {"seconds": round(sec, 1), "peak_rss_mib": round(peaks.get(name, 0) / 2**20)}
                 for name, sec in seconds.items()}
    gate = next((ln.strip() for ln in reversed(lines) if "validated:" in ln or "failed validation" in ln), None)
    return {"command": " ".join(cmd[2:]), "exit_code": proc.returncode, "wall_seconds": round(wall, 1),
            "peak_rss_mib": round(max(peaks.values(), default=0) / 2**20), "stages": per_stage,
            "gate": gate or (stdout.strip().splitlines() or [""])[-1], "stderr_tail": lines[-12:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--targets", default="onnx:int8,onnx:int4", help="target:quant pairs, comma-separated")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--whole", action="store_true", help="the whole-model export path (for before/after)")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "retnet_edge"]
    ckpt = args.work / f"{args.preset}-bf16"
    if not (ckpt / "config.json").is_file():
        subprocess.run([*cli, "init-random", "--preset", args.preset, "--dtype", "bf16", "-o", str(ckpt)], check=True)
    runs = []
    for pair in args.targets.split(","):
        target, quant = pair.split(":")
        out = args.work / f"{args.preset}-export-{target}-{quant}"
        r = run_export([*cli, "export", str(ckpt), "--target", target, "--quant", quant, "-o", str(out), "--force",
                                *(["--whole-model"] if args.whole else [])])
        r.update(target=target, quant=quant)
        runs.append(r)
        print(f"{args.preset} {target} {quant}: exit {r['exit_code']}, peak RSS {r['peak_rss_mib']:,} MiB, "
              f"{r['wall_seconds']:.0f} s; {r['gate']}", file=sys.stderr)
    import torch

    doc = {"tool": "benchmarks/export_memory.py", "preset": args.preset, "checkpoint_dtype": "bf16",
           "path": "whole model" if args.whole else "streamed (one layer at a time)",
           "torch": torch.__version__,
           "checkpoint_bytes": sum(f.stat().st_size for f in ckpt.iterdir()),
           "machine": {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
           "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / f"export_memory_{args.preset}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
