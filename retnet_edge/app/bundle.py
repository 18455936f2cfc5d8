"""`export_bundle`: the main job end to end — every target × quant exported, gated, scored and benched,
into one directory with a report a person can read.

    DIR/onnx-int8/  DIR/onnx-int4/  DIR/executorch-int8/  DIR/executorch-int4/   (each: artifact + manifest)
    DIR/report.json  DIR/report.md  DIR/latency_vs_context.png  DIR/memory_vs_context.png

Each artifact is written by `export_artifact` (its own gate: nothing written past tolerance). A
failure in one target × quant is recorded and the others still run; the caller turns failures into a
non-zero exit after the report is written.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Callable

from ..base.io_utils import (
    atomic_output_dir,
    atomic_write_text,
    check_distinct,
    usable_output,
)
from ..base.paths import resolve_path
from ..base.progress import stages
from ..checkpoints.loader import load_config
from ..contract import MANIFEST_FILE, tokenizer_file
from ..contract.request import ExportRequest
from ..core.config import RetNetConfig
from ..errors import ConfigError, RetNetEdgeError
from ..exporters import export_artifact
from .inspection import same_shape_kv_bytes
from .quality import agreement, heldout_text, perplexity, reference_stream
from .report import render_markdown

BENCH_CONTEXTS = (0, 2048)
BENCH_TOKENS, BENCH_REPEAT = 32, 3
TASK_ITEMS = 100  # demo-mc items per artifact in the report (the whole 300 is `eval --tasks demo-mc`)
REPORT_JSON, REPORT_MD = "report.json", "report.md"


def parse_list(value: str | None, default: tuple[str, ...], name: str) -> list[str]:
    """`onnx,executorch` -> ["onnx", "executorch"]; None -> the default."""
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{name} needs at least one value")
    return items


def _check_bundle_dir(out: Path, force: bool) -> None:
    if out.is_file() or out.is_symlink():
        raise RetNetEdgeError(f"{out} exists and is not a directory")
    if (out / MANIFEST_FILE).is_file():
        raise RetNetEdgeError(f"{out} is a single artifact; a multi-artifact export writes a directory of them",
                              hint="choose another -o DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RetNetEdgeError(f"{out} already exists", hint="pass --force to replace it (the whole directory)")


def _parity(worst: dict | None) -> dict | None:
    if worst is None:
        return None
    return {"top1": worst["top1"], "top1_confident": worst.get("top1_confident"), "kl": worst["kl"],
            "rounding_kl": worst.get("rounding_kl"), "max_rel": worst["max_rel"], "check": worst["name"]}


def _source_summary(src: Path, cfg: RetNetConfig) -> dict:
    return {"path": str(src), "parameters": cfg.parameter_count(), "config": cfg.to_dict(),
            "state_bytes_per_sequence": cfg.state_bytes(1),
            "kv_cache_bytes_fp16": {str(t): same_shape_kv_bytes(cfg, t) for t in (2048, 8192, 32768)}}


def _export_one(request: ExportRequest, work: Path, bar) -> dict:
    """One artifact of the bundle into `work`: its record (status, sizes, the gate's worst check)."""
    name = request.name
    bar.log(f"[{name}] exporting")
    t0 = time.time()
    rec: dict = {"name": name, "target": request.target, "quant": request.quant.scheme.value,
                 "flavor": request.flavor, "path": str(request.output)}
    try:
        art = export_artifact(dataclasses.replace(request, output=work / name, force=True),
                              log=lambda s: bar.log(f"[{name}] {s}"))
        m = art.manifest
        rec.update(status="ok", bytes=m.size_bytes, files={k: v.bytes for k, v in m.files.items()},
                   parity=_parity(m.worst_check()), quant_fallbacks=list(m.quant_fallbacks),
                   quant_layers=list(m.quant_layers))
    except RetNetEdgeError as exc:
        rec.update(status="failed", error=str(exc), exit_code=exc.exit_code)
        bar.log(f"[{name}] FAILED: {exc}")
    except Exception as exc:  # a bug in one exporter must not cost the user the other artifacts
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", exit_code=1)
        bar.log(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
    rec["export_seconds"] = round(time.time() - t0, 1)
    return rec


def export_bundle(requests: list[ExportRequest], output: str | Path, bench: bool = True, force: bool = False,
                  log: Callable[[str], None] = lambda s: None, show_bar: bool = False) -> dict:
    """Export, gate, score and bench every request (one per target x quant, `contract.request.export_requests`)
    into the directory `output`; returns the report.

    The directory is written as a whole (`atomic_output_dir`): with --force it replaces the previous one
    entirely, so a bundle never mixes artifacts of two exports."""
    if not requests:
        raise ConfigError("nothing to export")
    src = resolve_path(requests[0].model)
    out = usable_output(output)
    check_distinct(src, out)
    _check_bundle_dir(out, force)
    _, cfg = load_config(src)
    t_start = time.time()
    n_stages = 2 * len(requests) + 1 + (1 if bench else 0)  # export+gate, quality each; the reference; bench
    with atomic_output_dir(out, force=force) as work, stages(n_stages, "export", show_bar, log) as bar:
        artifacts = []
        for r in requests:
            bar.stage(f"{r.name}: export + gate")
            artifacts.append(_export_one(r, work, bar))
            bar.done()
        ok = [a for a in artifacts if a["status"] == "ok"]
        bar.stage("quality: fp32 reference")
        quality_ref = _quality(src, ok, work, bar)
        plots: list[str] = []
        if bench and ok:
            bar.stage("bench")
            plots = _bench(ok, work, bar)
            bar.done()
        report = {"tool": "retnet-edge export", "output": str(out),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
                  "source": _source_summary(src, cfg), "quality_reference": quality_ref,
                  "requests": [{"name": r.name, "target": r.target, "flavor": r.flavor, "quant": r.quant.to_dict(),
                                "steps": r.steps} for r in requests], "bench": bench,
                  "artifacts": artifacts, "plots": plots, "seconds": round(time.time() - t_start, 1),
                  "failed": [a["name"] for a in artifacts if a["status"] != "ok"]}
        atomic_write_text(work / REPORT_JSON, _json(report))
        atomic_write_text(work / REPORT_MD, render_markdown(report))
    return report


def _json(report: dict) -> str:
    import json

    return json.dumps(report, indent=2, default=str)


def _quality(src: Path, ok: list[dict], work: Path, bar) -> dict | None:
    """Score every exported artifact (in `work`); returns what the fp32 reference scored (the column's baseline).

    With held-out text: perplexity and, on the same windows, KL / top-1 against fp32 (the fp32 windows run
    once, `CachedReference`); without: KL / top-1 on text the fp32 model samples itself."""
    from ..base.tokenizer import load_tokenizer
    from ..runtimes import load_runner
    from ..runtimes.scoring import compare_text
    from .cached_reference import CachedReference
    from .quality import QUALITY_TOKENS

    tok_file = tokenizer_file(src) if src.is_dir() else None
    text_file = heldout_text(src) if src.is_dir() else None
    if not ok:
        bar.done(1)
        return None
    reference = load_runner(src)
    if text_file and tok_file:
        tok = load_tokenizer(tok_file)
        text = text_file.read_text(encoding="utf-8")
        reference = CachedReference(reference)
        ref = {**perplexity(reference, tok, text), "text": str(text_file)}
    else:
        start = 0
        if tok_file:
            tok = load_tokenizer(tok_file)
            start = tok.bos_id if tok.bos_id is not None else (tok.eos_id or 0)
        stream = reference_stream(reference, start)
        ref = {"metric": "agreement", "tokens": len(stream), "text": "the fp32 model's own sampled text"}
    bar.done()
    for a in ok:
        bar.stage(f"{a['name']}: quality")
        try:
            runner = load_runner(work / a["name"])
            if ref["metric"] == "perplexity":
                c = compare_text(runner, reference, tok, text, max_tokens=QUALITY_TOKENS)
                q = {"metric": "perplexity", "perplexity": c["perplexity"], "tokens": c["tokens"],
                     "delta_vs_fp32": c["perplexity"] - ref["perplexity"], "kl": c["kl_mean"], "top1": c["top1"]}
            else:
                q = agreement(reference, runner, stream)
            acc = _task_accuracy(src, runner, tok, bar) if ref["metric"] == "perplexity" else None
            if acc:
                q["task"] = acc
            a["quality"] = q
            ppl = f"perplexity {q['perplexity']:.3f} (fp32 {ref['perplexity']:.3f}), " if "perplexity" in q else ""
            bar.log(f"[{a['name']}] quality: {ppl}KL {q['kl']:.2e}, top-1 {q['top1']:.3f}")
        except RetNetEdgeError as exc:
            a["quality"] = {"error": str(exc)}
            bar.log(f"[{a['name']}] quality pass failed: {exc}")
        bar.done()
    return ref


def _task_accuracy(src: Path, runner, tok, bar) -> dict | None:
    """demo-mc accuracy (first TASK_ITEMS items) beside perplexity: only for the demo, whose held-out text the
    task is built from, and only with the `eval` extra (lm-eval); otherwise the report says nothing of it."""
    import importlib.util

    from ..base.paths import DEMO_DIR
    from .tasks import DEMO_MC, task_accuracy

    if src.resolve() != DEMO_DIR.resolve():
        return None
    if importlib.util.find_spec("lm_eval") is None:
        bar.log("task accuracy skipped: the `eval` extra (lm-eval) is not installed")
        return None
    r = task_accuracy(runner, tok, DEMO_MC, limit=TASK_ITEMS)
    return {"task": DEMO_MC, "items": r["items"], "acc": r["acc"], "acc_stderr": r["acc_stderr"],
            "seconds": round(r["seconds"], 1)}


def _bench(ok: list[dict], work: Path, bar) -> list[str]:
    """A short bench of every artifact: decode ms/token at context 0 and 2048 (1 thread), RSS, state bytes."""
    from ..bench import BenchConfig, run_bench

    bc = BenchConfig(contexts=list(BENCH_CONTEXTS), tokens=BENCH_TOKENS, threads=[1], repeat=BENCH_REPEAT,
                     baselines=())
    try:
        doc = run_bench([str(work / a["name"]) for a in ok], bc, log=bar.log)
    except RetNetEdgeError as exc:
        bar.log(f"bench failed: {exc}")
        for a in ok:
            a["bench"] = {"error": str(exc)}
        return []
    for a in ok:
        rows = sorted((r for r in doc["results"] if r["artifact"] == str(work / a["name"])), key=lambda r: r["context"])
        a["bench"] = {"threads": 1, "runtime": rows[0]["runtime"] if rows else None,
                      "by_context": {str(r["context"]): {"ms_per_token": r["ms_per_token_median"],
                                                         "tokens_per_s": r["tokens_per_s"], "rss_mb": r["rss_mb"],
                                                         "state_bytes": r["state_bytes"],
                                                         "roof_fraction": r["roof_fraction"]} for r in rows}}
    try:
        from ..bench.plots import write_plots

        return [p.name for p in write_plots(doc, work)]
    except RetNetEdgeError as exc:  # matplotlib is in the bench extra
        bar.log(f"no plot: {exc}")
        return []
