"""Shared helpers for benchmark scripts: timing, memory, machine facts, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": " avx_vnni" in flags, "python": platform.python_version()}


def time_calls(fn: Callable[[], object], n: int, warmup: int = 3) -> dict:
    """Median / p90 / mean milliseconds of n calls after warmup."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"median_ms": round(statistics.median(ts), 3), "p90_ms": round(ts[int(0.9 * (len(ts) - 1))], 3),
            "mean_ms": round(statistics.fmean(ts), 3), "n": n}


def json_from(cmd: list[str]) -> dict:
    """Run a command in a fresh process and parse the JSON object on its last stdout line."""
    import subprocess

    out = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def build_preset_artifact(preset: str, target: str, quant: str, out: Path, **options) -> Path:
    """A random-weight preset exported through the real pipeline with the gate explicitly skipped.

    Random weights are for speed and memory only; the manifest says `"validation": "skipped"`.
    """
    import tempfile

    from retnet_edge.checkpoints.presets import init_random
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters import export_model

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / preset
        init_random(preset, src)
        export_model(src, target, QuantConfig(quant), out, force=True, validate_artifact=False,
                     options=options or None, log=lambda s: print(s, file=__import__("sys").stderr))
    return out
