"""Long-run stability of the recurrent step (issue 14): N steps of the demo model through artifacts.

    python benchmarks/long_run.py ONNX_ART PTE_ART --steps 1000000 -o benchmarks/results/long_run_1m.json

At 1k / 10k / 100k / 250k / 500k / 750k / 1M steps (those <= --steps) each artifact's logits are compared
with the eager chunkwise form on the same seeded token stream (fp32: within 1e-3 relative is the bar), its
state is checked finite and its process's resident memory sampled. The eager reference and each runner
run in their own child processes, side by side, so a runner's process holds only that runner: its RSS
is the runner's own and must stay flat.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MARKS = (1_000, 10_000, 100_000, 250_000, 500_000, 750_000, 1_000_000)


def _save_npz(path: Path, arrays: dict) -> None:
    """Atomically (a killed run leaves no partial reference for the next run to reuse)."""
    from retnet_edge.base.io_utils import atomic_write_bytes

    buf = io.BytesIO()  # a file object: savez adds no .npz suffix
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def reference_child(model: str, marks: list[int], out: Path) -> None:
    """The eager chunkwise logits at the marks (one thread)."""
    import torch

    import retnet_edge
    from retnet_edge.bench.stability import reference_logits

    torch.set_num_threads(1)
    _save_npz(out, {str(k): v for k, v in reference_logits(retnet_edge.load(model), marks).items()})


def runner_child(artifact: str, marks: list[int], threads: int, out: Path) -> None:
    """The artifact's runner over the stream: records (JSON beside) and logits at the marks."""
    from retnet_edge.base.io_utils import atomic_write_text
    from retnet_edge.bench.measure import memory_mb
    from retnet_edge.bench.stability import runner_records
    from retnet_edge.runtimes import load_runner

    base = memory_mb()["rss"]
    t0 = time.time()
    records = runner_records(load_runner(artifact, threads=threads), marks,
                             log=lambda s: print(f"[{Path(artifact).name}] {s}", flush=True))
    _save_npz(out, {str(r["step"]): r.pop("logits") for r in records})
    rss = [r["rss_mb"] for r in records]
    atomic_write_text(out.with_suffix(".json"), json.dumps({
        "artifact": artifact, "threads": threads, "seconds": round(time.time() - t0, 1),
        "rss_before_load_mb": round(base, 1), "rss_growth_after_first_mark_mb": round(max(rss) - rss[0], 1),
        "torch_in_process": "torch" in sys.modules, "records": records}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--model", default="demo", help="the artifacts' source model (reference)")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=1, help="per runner")
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--work-dir", type=Path, help="where the children write (kept; the reference logits there "
                    "are reused by a later run of the same --model and --steps)")
    ap.add_argument("--child", nargs=2, metavar=("WHAT", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    from retnet_edge.bench.stability import marks_upto

    marks = marks_upto(a.steps, list(MARKS))
    if a.child:
        what, out = a.child
        return reference_child(a.model, marks, Path(out)) if what == "reference" else \
            runner_child(what, marks, a.threads, Path(out))
    if not a.artifacts:
        ap.error("name at least one artifact")
    t0 = time.time()
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="long_run_"))
    work.mkdir(parents=True, exist_ok=True)
    ref_path = work / f"reference_{a.model.replace('/', '_')}_{a.steps}.npz"  # kept: later runs reuse it
    common = [sys.executable, __file__, "--model", a.model, "--steps", str(a.steps), "--threads", str(a.threads)]
    todo = ([] if ref_path.is_file() else [("reference", ref_path)]) + \
        [(art, work / f"run_{i}_{Path(art).name}.npz") for i, art in enumerate(a.artifacts)]
    procs = [(what, out, subprocess.Popen([*common, "--child", what, str(out)])) for what, out in todo]
    failed = {what: proc.returncode for what, _, proc in procs if proc.wait() != 0}
    if "reference" in failed:
        sys.exit(f"the reference process failed (exit {failed['reference']})")
    ref, runs = np.load(ref_path), []
    for what, out, _ in procs:
        if what == "reference":
            continue
        if what in failed:
            runs.append({"artifact": what, "passed": False, "error": f"its process failed (exit {failed[what]})"})
            continue
        run, got = json.loads(out.with_suffix(".json").read_text()), np.load(out)
        for r in run["records"]:
            want = ref[str(r["step"])]
            r["max_rel"] = float(np.abs(got[str(r["step"])] - want).max() / np.abs(want).max())
        run["passed"] = all(r["finite"] and r["max_rel"] < 1e-3 for r in run["records"])
        runs.append(run)
    doc = {"tool": "benchmarks/long_run.py", "model": a.model, "steps": a.steps, "seconds": round(time.time() - t0, 1),
           "bar": "max |Δlogits| / max |logit| < 1e-3 vs the eager chunkwise form; state finite",
           "runs": runs, "passed": all(r["passed"] for r in runs)}
    if a.output:
        a.output.write_text(json.dumps(doc, indent=2) + "\n")
    for run in runs:
        print(json.dumps({k: v for k, v in run.items() if k != "records"}
                         | ({"max_rel": max(r["max_rel"] for r in run["records"])} if "records" in run else {})))
    print("passed" if doc["passed"] else "FAILED")
    sys.exit(0 if doc["passed"] else 1)


if __name__ == "__main__":
    main()
