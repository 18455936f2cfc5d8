"""`retnet-edge bench`: per-token latency and memory over context, a Transformer-KV baseline, the read roof.

`suite.run_bench` orchestrates (one fresh process per artifact and thread count), `measure.py` is what
runs in that process, `baseline.py` the same-size Transformer with a KV cache, `roof.py` the streaming
read kernel, `plots.py` the PNGs.
"""
from __future__ import annotations

from .suite import BenchConfig, render_table, run_bench

__all__ = ["BenchConfig", "run_bench", "render_table"]
