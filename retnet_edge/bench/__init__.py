"""`retnet-edge bench`: per-token latency and memory over context, a Transformer-KV baseline, the read roof.

`suite.run_bench` orchestrates (one fresh process per artifact and thread count), `measure.py` is what
runs in that process, `baseline.py` the same-size Transformer with a KV cache, `roof.py` the streaming
read kernel, `tools.py` builds the native tools (the roof kernel, the C++ harness) from package data,
`machine.py` names the CPU, `plots.py` the PNGs, `stability.py` long runs. May import every stage below
`app` (it exports its own Transformer baseline).
"""
from __future__ import annotations

from .suite import BenchConfig, render_bench_table, run_bench

__all__ = ["BenchConfig", "run_bench", "render_bench_table"]
