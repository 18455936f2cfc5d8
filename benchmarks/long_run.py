"""Long-run stability of the recurrent step (issue 14): N steps of the demo model through an artifact.

    python benchmarks/long_run.py ARTIFACT --steps 1000000 -o benchmarks/results/long_run_onnx.json

At 10k / 100k / 1M steps (those <= --steps) the artifact's logits are compared with the eager chunkwise
form on the same token stream (fp32: within 1e-3 relative is the bar), the state is checked finite and
resident memory sampled (flat: the state does not grow; the process also holds the eager model).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--model", default="demo", help="the artifact's source model (reference)")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()
    import torch

    import retnet_edge
    from retnet_edge.bench.stability import long_run

    torch.set_num_threads(a.threads)  # the reference shares the machine with the runner
    from retnet_edge.runtimes import load_runner

    marks = [m for m in (1_000, 10_000, 100_000, 1_000_000) if m <= a.steps] or [a.steps]
    t0 = time.time()
    records = long_run(load_runner(a.artifact, threads=a.threads), retnet_edge.load(a.model), a.steps, marks,
                       log=lambda s: print(s, flush=True))
    doc = {"tool": "benchmarks/long_run.py", "artifact": a.artifact, "model": a.model, "steps": a.steps,
           "threads": a.threads, "seconds": round(time.time() - t0, 1), "records": records,
           "passed": all(r["finite"] and r["max_rel"] < 1e-3 for r in records)}
    if a.output:
        a.output.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "records"}))


if __name__ == "__main__":
    main()
