"""Task accuracy (issue 33): demo-mc on eager fp32 and the demo's artifacts, shared-context scoring against
each choice from scratch, and the same accuracy through lm-eval's own command line.

    python benchmarks/task_accuracy.py --work out/demo-tasks -o task_accuracy_demo
    python benchmarks/task_accuracy.py --model .data/deep --work out/deep-tasks \
        --subjects eager-fp32,onnx-fp32,onnx-int8,onnx-int4 -o task_accuracy_deep   # issue 28's deeper subject

For each subject (eager fp32 and ONNX fp32 / int8 / int4, ExecuTorch int8 / int4 in the default runner
flavour, ExecuTorch int8 in the io flavour; artifacts exported into --work when missing):
1. accuracy and acc_norm (± stderr) on all of demo-mc through `run_tasks` (what `retnet-edge eval --tasks`
   runs), contexts shared; items/s and tokens run against the from-scratch count;
2. the first --scratch-items items, contexts shared and every choice from scratch, alternated --repeats
   times (best of each kept: the machine may be shared): items/s of each, and the same accuracy;
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


def subject_path(name: str, model: str, work: Path) -> str:
    """The model path of a subject: the model itself for eager, else its artifact (exported on first use)."""
    if SUBJECTS[name] is None:
        return model
    path = work / name
    if not (path / "manifest.json").is_file():
        from retnet_edge.contract.quant import QuantConfig
        from retnet_edge.exporters import export_model

        target, scheme, flavor = SUBJECTS[name]
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        export_model(model, target, QuantConfig(scheme), path, options={"flavor": flavor} if flavor else None)
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


def accuracy(path: str, threads: int) -> dict:
    """All of demo-mc through run_tasks (what `retnet-edge eval --tasks` runs), contexts shared where possible."""
    from retnet_edge.app.cli_utils import runner_and_tokenizer
    from retnet_edge.app.tasks import run_tasks

    runner, tok = runner_and_tokenizer(path, None, threads)
    full = run_tasks(runner, tok, ["demo-mc"])
    row, s = full["tasks"]["demo-mc"], full["scoring"]
    return {"path": path, **{k: row[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "items")},
            "shared": s["shared"], "tokens": s["tokens"], "naive_tokens": s["naive_tokens"],
            "token_ratio": round(s["token_ratio"], 3), "seconds": round(s["seconds"], 2),
            "items_per_s": round(row["items"] / s["seconds"], 3), "notes": s["notes"]}


def speed(path: str, threads: int, items: int, repeats: int) -> dict | None:
    """Shared vs from scratch on the first `items` items, alternated `repeats` times, best of each: the
    machine these ran on was shared, and the best run is the one least slowed by its neighbours."""
    from retnet_edge.app.cli_utils import runner_and_tokenizer
    from retnet_edge.app.tasks import run_tasks

    runner, tok = runner_and_tokenizer(path, None, threads)
    runs: dict[str, list] = {"shared": [], "scratch": []}
    for _ in range(repeats):
        for mode in runs:
            runs[mode].append(run_tasks(runner, tok, ["demo-mc"], limit=items, shared=mode == "shared"))
    if not runs["shared"][0]["scoring"]["shared"]:
        return None  # the program keeps its state inside itself: both are from scratch
    best = {m: min(r["scoring"]["seconds"] for r in rs) for m, rs in runs.items()}
    same = all(r["tasks"]["demo-mc"][k] == runs["shared"][0]["tasks"]["demo-mc"][k]
               for rs in runs.values() for r in rs for k in ("acc", "acc_norm"))
    return {"items": items, "repeats": repeats, "same_accuracy": same,
            "items_per_s_shared": round(items / best["shared"], 3), "items_per_s_scratch": round(items / best["scratch"], 3),
            "speedup": round(best["scratch"] / best["shared"], 3),
            "all_seconds": {m: [round(r["scoring"]["seconds"], 2) for r in rs] for m, rs in runs.items()}}


def measure(name: str, path: str, args: argparse.Namespace, old: dict) -> dict:
    parts = args.parts.split(",")
    out = dict(old)
    if "accuracy" in parts:
        out.update(accuracy(path, args.threads))
        print(f"{name}: acc {out['acc']:.4f} ±{out['acc_stderr']:.4f}, acc_norm {out['acc_norm']:.4f}, "
              f"{out['items_per_s']:.2f} items/s ({'shared' if out['shared'] else 'from scratch'}), tokens "
              f"{out['tokens']:,} / naive {out['naive_tokens']:,}", file=sys.stderr, flush=True)
    if "speed" in parts and (vs := speed(path, args.threads, args.scratch_items, args.repeats)) is not None:
        out["vs_scratch"] = vs
        print(f"{name}: {vs['items_per_s_shared']:.2f} items/s shared, {vs['items_per_s_scratch']:.2f} from scratch "
              f"({vs['speedup']:.2f}x)", file=sys.stderr, flush=True)
    if "lm-eval" in parts:
        lm = through_lm_eval(path, args.threads)
        out["lm_eval_cli"] = {**lm, "same_accuracy": lm["acc"] == out.get("acc") and lm["acc_norm"] == out.get("acc_norm")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="the fp32 model (its tokenizer and held-out text: the demo's)")
    ap.add_argument("--work", type=Path, default=Path("out/demo-tasks"), help="where the artifacts are (exported if missing)")
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--parts", default="accuracy,speed,lm-eval", help="what to measure (accuracy, speed, lm-eval)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scratch-items", type=int, default=50, help="items of the shared vs from-scratch timing")
    ap.add_argument("--repeats", type=int, default=3, help="alternated timing runs of each mode (best kept)")
    ap.add_argument("--update", action="store_true", help="keep the other subjects (and parts) of an existing result")
    ap.add_argument("-o", "--output", default="task_accuracy_demo")
    args = ap.parse_args()
    previous = Path(__file__).parent / "results" / f"{args.output}.json"
    rows = json.loads(previous.read_text())["subjects"] if args.update and previous.is_file() else {}
    for name in args.subjects.split(","):
        try:
            old = rows.get(name, {}) if "error" not in rows.get(name, {}) else {}
            rows[name] = measure(name, subject_path(name, args.model, args.work), args, old)
        except Exception as exc:  # one subject that cannot be exported or run must not lose the others
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: {rows[name]['error']}", file=sys.stderr, flush=True)
    ref = rows.get("eager-fp32", {}).get("acc")
    for row in rows.values():
        if "acc" in row:
            row["acc_minus_eager_fp32_points"] = None if ref is None else round(100 * (row["acc"] - ref), 2)
    path = write_result(args.output, {"task": "demo-mc", "model": args.model, "threads": args.threads,
                                      "load_average": os.getloadavg(), "subjects": rows})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
