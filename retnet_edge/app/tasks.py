"""Task accuracy of a model or artifact: the demo's multiple-choice task, task runs, the accuracy table.

`run_tasks` scores lm-evaluation-harness tasks (standard names, or local YAML + JSONL files) through a
Runner; `task_accuracy` is the one-task summary a report shows beside perplexity. lm-eval itself is
imported only by `lm_eval_model` (the `eval` extra), and only when a task runs.

`demo-mc` is built from the demo's held-out text (every 16th chapter of the KJV, never trained on): an
item is four consecutive verses of a chapter, and its choices are the verse that follows and three verses
of similar length from other chapters, the answer's place cycling through A-D. The build is deterministic
(distractors ranked by sha256, no RNG), so
`scripts/make_demo_mc.py` rewrites the shipped JSONL byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from ..base.paths import DEMO_DIR
from ..base.tokenizer import Tokenizer
from ..errors import ConfigError
from ..runtimes import Runner

DEMO_TASKS_DIR = DEMO_DIR / "tasks"  # lm-eval task files shipped with the package (--include-path-able)
DEMO_MC = "demo-mc"
DEMO_MC_FILE = DEMO_TASKS_DIR / "demo-mc.jsonl"
MC_ITEMS = 300  # a few hundred: stderr of accuracy ~ 0.029 at 50 %
MC_CONTEXT_VERSES = 4  # ~110 tokens of context against ~30 per choice: the shape where sharing pays
MC_CHOICES = 4
MC_LENGTH_BAND = (0.75, 1.33)  # a distractor's length / the answer's: length alone must not give it away
MC_SEED = "demo-mc/1"


def chapters(text: str) -> list[list[str]]:
    """The held-out text's chapters (blank-line separated), each a list of its verses (one per line)."""
    return [[v.strip() for v in block.splitlines() if v.strip()] for block in text.split("\n\n") if block.strip()]


def _rank(*key: object) -> str:
    return hashlib.sha256(":".join(map(str, (MC_SEED, *key))).encode()).hexdigest()


def build_demo_mc(text: str, n_items: int = MC_ITEMS) -> list[dict]:
    """`demo-mc`'s items: {"id", "context", "choices", "label"}, evenly spread over the text's chapters."""
    chaps = chapters(text)
    slots = [(c, i) for c, verses in enumerate(chaps) for i in range(MC_CONTEXT_VERSES, len(verses))]
    if len(slots) < n_items:
        raise ConfigError(f"the text has {len(slots)} verses after {MC_CONTEXT_VERSES} others, fewer than {n_items}")
    pool = [(c, v) for c, verses in enumerate(chaps) for v in verses]
    items = []
    for k in range(n_items):
        c, i = slots[k * len(slots) // n_items]
        answer = chaps[c][i]
        lo, hi = (len(answer) * f for f in MC_LENGTH_BAND)
        others = sorted({v for oc, v in pool if oc != c and v != answer and lo <= len(v) <= hi},
                        key=lambda v: _rank(c, i, v))
        if len(others) < MC_CHOICES - 1:
            raise ConfigError(f"too few verses of similar length to {answer[:40]!r} for {MC_CHOICES} choices")
        label = k % MC_CHOICES  # balanced: always answering A scores exactly 1 / MC_CHOICES
        choices = others[: MC_CHOICES - 1]
        choices.insert(label, answer)
        items.append({"id": f"{c}:{i}", "context": "\n".join(chaps[c][i - MC_CONTEXT_VERSES : i]),
                      "choices": choices, "label": label})
    return items


def demo_mc_jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)


def check_include_path(path: str | Path) -> Path:
    """A folder of lm-eval task files whose every YAML parses and of which at least one defines a task."""
    import yaml  # lm-eval's dependency: read only when a task runs

    class Loader(yaml.SafeLoader):  # lm-eval's tags (`!function utils.f`) read as plain values
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"--include-path {d} {'is not a directory' if d.exists() else 'not found'}")
    found = 0
    for f in sorted(d.rglob("*.yaml")):
        try:
            cfg = yaml.load(f.read_text(encoding="utf-8"), Loader=Loader)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{f} is not valid YAML ({' '.join(str(exc).split())})") from exc
        found += isinstance(cfg, dict) and any(k in cfg for k in ("task", "group"))
    if not found:
        raise ConfigError(f"--include-path {d} holds no task file (a .yaml with a 'task:' key)")
    return d


def check_task_options(tasks: list[str], limit: int | None, num_fewshot: int | None) -> None:
    if not tasks:
        raise ConfigError("--tasks needs at least one task name")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 item per task, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be >= 0, got {num_fewshot}")


METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity")
INFO = ("items", "num_fewshot")


def summarize(results: dict) -> dict:
    """task -> {metric: value, metric_stderr: value, items, num_fewshot} from lm-eval's results dict; a
    metric under a filter other than lm-eval's "none" is named `metric(filter)`."""
    out = {}
    for name, row in results["results"].items():
        metrics = {}
        for key, value in row.items():
            metric, _, flt = key.partition(",")
            base = metric.removesuffix("_stderr")
            if flt and isinstance(value, (int, float)) and base in METRICS:
                named = base if flt == "none" else f"{base}({flt})"
                metrics[named + metric[len(base):]] = float(value)
        n = results.get("n-samples", {}).get(name, {})
        out[name] = {**metrics, "items": n.get("effective"), "num_fewshot": results.get("n-shot", {}).get(name)}
    return out


def run_tasks(runner: Runner, tokenizer: Tokenizer, tasks: list[str], limit: int | None = None,
              num_fewshot: int | None = None, include_path: str | Path | None = None, shared: bool = True,
              max_length: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Accuracy (and acc_norm, stderr) of the runner on lm-eval tasks, with what the scoring ran.

    Names are lm-eval's standard tasks (their data sets come from the Hub the first time), demo-mc, or
    the tasks of `include_path`. Bad input (unknown task, missing data, a broken item, an item longer
    than the artifact's limit) raises a one-line ConfigError before any scoring."""
    check_task_options(tasks, limit, num_fewshot)
    folders = [DEMO_TASKS_DIR] + ([check_include_path(include_path)] if include_path is not None else [])
    # here, not at the top: lm-eval (the `eval` extra) loads only when a task runs
    from .lm_eval_model import RetNetEdgeLM, evaluate_tasks, load_tasks, task_manager

    t0 = time.perf_counter()
    task_dict = load_tasks(task_manager(tasks, folders), tasks, limit)
    lm = RetNetEdgeLM(runner=runner, tok=tokenizer, max_length=max_length, shared=shared, progress=progress)
    results = evaluate_tasks(lm, task_dict, limit, num_fewshot)
    return {"tasks": summarize(results), "scoring": lm.stats.to_dict(), "limit": limit, "num_fewshot": num_fewshot,
            "seconds": time.perf_counter() - t0}


def task_accuracy(runner: Runner, tokenizer: Tokenizer, task: str = DEMO_MC, limit: int | None = None) -> dict:
    """One task's accuracy for a report: {task, acc, acc_stderr, acc_norm, acc_norm_stderr, items, seconds}."""
    r = run_tasks(runner, tokenizer, [task], limit=limit)
    return {"task": task, **r["tasks"][task], "seconds": r["seconds"]}


def format_table(report: dict) -> str:
    """One row per task and metric: items, value, ± stderr; then what the scoring ran."""
    metrics = {n: [k for k in row if k not in INFO and not k.endswith("_stderr")] for n, row in report["tasks"].items()}
    w = max([16, *(len(m) for ms in metrics.values() for m in ms)])
    lines = [f"{'task':<24} {'items':>6}  {'metric':<{w}} {'value':>8}  {'stderr':>8}"]
    for name, row in report["tasks"].items():
        first = True
        for metric in metrics[name]:
            stderr = row.get(f"{metric}_stderr")
            items = row["items"] if first and row["items"] is not None else ""
            lines.append(f"{name if first else '':<24} {items:>6}  {metric:<{w}} {row[metric]:>8.4f}  "
                         f"{'' if stderr is None else f'±{stderr:.4f}':>8}")
            first = False
    s = report["scoring"]
    if s["requests"]:
        how = "shared contexts" if s["shared"] else "each from scratch"
        lines.append(f"scored {s['requests']:,} requests in {s['contexts']:,} contexts ({how}): {s['tokens']:,} "
                     f"tokens run, {s['naive_tokens']:,} from scratch ({s['token_ratio']:.2f}x)  "
                     f"[{report['seconds']:.1f} s]")
    lines += [f"note: {n}" for n in s["notes"]]
    return "\n".join(lines)
