"""What the benchmark scripts share: where results go. Machine facts, timing and memory come from
`retnet_edge.bench` (machine_facts, versions), so a figure always names the CPU the same way."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, data: dict) -> Path:
    """benchmarks/results/NAME.json, with the machine the figures were measured on."""
    from retnet_edge.bench.machine import machine_facts, versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_facts(), "versions": versions(), **data}, indent=2))
    return path
