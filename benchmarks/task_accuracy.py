"""Task accuracy (issue 33): demo-mc on eager fp32 and the demo's artifacts, shared-context scoring against
each choice from scratch, and the same accuracy through lm-eval's own command line.

    python benchmarks/task_accuracy.py --work out/demo-tasks -o task_accuracy_demo

For each subject (eager fp32 and ONNX fp32 / int8 / int4, ExecuTorch int8 / int4 in the default runner
flavour, ExecuTorch int8 in the io flavour; artifacts exported into --work when missing):
1. accuracy and acc_norm (± stderr) on all of demo-mc through `run_tasks` (what `retnet-edge eval --tasks`
   runs), contexts shared; items/s and tokens run against the from-scratch count;
2. the first --scratch-items items again with every choice scored from scratch: items/s, and the same
   choices (accuracy on those items equal);
3. the whole task through `python -m retnet_edge.app.lm_eval_model --model retnet-edge` (lm-eval's own CLI
   in a fresh process): its acc and acc_norm must equal step 1's.
The ExecuTorch runner flavour keeps its state inside the program, so it is scored from scratch in 1 too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

SUBJECTS = {"eager-fp32": None, "onnx-fp32": ("onnx", "fp32", None), "onnx-int8": ("onnx", "int8", None),
            "onnx-int4": ("onnx", "int4", None), "executorch-int8": ("executorch", "int8", None),
            "executorch-int4": ("executorch", "int4", None), "executorch-int8-io": ("executorch", "int8", "io")}


def subject_path(name: str, work: Path) -> str:
    """The model path of a subject: `demo` for eager, else its artifact (exported on first use)."""
    if SUBJECTS[name] is None:
        return "demo"
    path = work / name
    if not (path / "manifest.json").is_file():
        from retnet_edge.contract.quant import QuantConfig
        from retnet_edge.exporters import export_model

        target, scheme, flavor = SUBJECTS[name]
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        export_model("demo", target, QuantConfig(scheme), path, options={"flavor": flavor} if flavor else None)
    return str(path)


def through_lm_eval(path: str, threads: int) -> dict:
    """demo-mc through lm-eval's own command line, in a fresh process."""
    from retnet_edge.app.tasks import DEMO_TASKS_DIR

    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "retnet_edge.app.lm_eval_model", "--model", "retnet-edge",
                        "--model_args", f"artifact={path},threads={threads}", "--tasks", "demo-mc",
                        "--include_path", str(DEMO_TASKS_DIR), "--output_path", out], check=True,
                       capture_output=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        r = json.loads(next(Path(out).rglob("results_*.json")).read_text())["results"]["demo-mc"]
    return {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"]}


def measure(name: str, path: str, threads: int, scratch_items: int) -> dict:
    from retnet_edge.app.cli_utils import runner_and_tokenizer
    from retnet_edge.app.tasks import run_tasks

    runner, tok = runner_and_tokenizer(path, None, threads)
    full = run_tasks(runner, tok, ["demo-mc"])
    row, s = full["tasks"]["demo-mc"], full["scoring"]
    out = {"path": path, **{k: row[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "items")},
           "shared": s["shared"], "tokens": s["tokens"], "naive_tokens": s["naive_tokens"],
           "token_ratio": round(s["token_ratio"], 3), "seconds": round(s["seconds"], 2),
           "items_per_s": round(row["items"] / s["seconds"], 3), "notes": s["notes"]}
    if s["shared"]:
        part = run_tasks(runner, tok, ["demo-mc"], limit=scratch_items)
        scratch = run_tasks(runner, tok, ["demo-mc"], limit=scratch_items, shared=False)
        same = all(part["tasks"]["demo-mc"][k] == scratch["tasks"]["demo-mc"][k] for k in ("acc", "acc_norm"))
        ips = {k: scratch_items / r["scoring"]["seconds"] for k, r in (("shared", part), ("scratch", scratch))}
        out["vs_scratch"] = {"items": scratch_items, "same_accuracy": same,
                             "items_per_s_shared": round(ips["shared"], 3),
                             "items_per_s_scratch": round(ips["scratch"], 3),
                             "speedup": round(ips["shared"] / ips["scratch"], 3)}
    print(f"{name}: acc {out['acc']:.4f} ±{out['acc_stderr']:.4f}, acc_norm {out['acc_norm']:.4f}, "
          f"{out['items_per_s']:.2f} items/s ({'shared' if s['shared'] else 'from scratch'}), "
          f"tokens {s['tokens']:,} / naive {s['naive_tokens']:,}"
          + (f", speedup {out['vs_scratch']['speedup']:.2f}x" if "vs_scratch" in out else ""), file=sys.stderr, flush=True)
    lm = through_lm_eval(path, threads)
    out["lm_eval_cli"] = {**lm, "same_accuracy": lm["acc"] == out["acc"] and lm["acc_norm"] == out["acc_norm"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("out/demo-tasks"), help="where the artifacts are (exported if missing)")
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scratch-items", type=int, default=100)
    ap.add_argument("-o", "--output", default="task_accuracy_demo")
    args = ap.parse_args()
    rows = {}
    for name in args.subjects.split(","):
        try:
            rows[name] = measure(name, subject_path(name, args.work), args.threads, args.scratch_items)
        except Exception as exc:  # one subject that cannot be exported or run must not lose the others
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: {rows[name]['error']}", file=sys.stderr, flush=True)
    ref = rows.get("eager-fp32", {}).get("acc")
    for row in rows.values():
        if "acc" in row:
            row["acc_minus_eager_fp32_points"] = None if ref is None else round(100 * (row["acc"] - ref), 2)
    path = write_result(args.output, {"task": "demo-mc", "threads": args.threads, "load_average": os.getloadavg(),
                                      "subjects": rows})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
