"""`export_bundle`: the main job end to end — every target × quant exported, gated, scored and benched,
into one directory with a report a person can read.

    DIR/onnx-int8/  DIR/onnx-int4/  DIR/executorch-int8/  DIR/executorch-int4/   (each: artifact + manifest)
    DIR/report.json  DIR/report.md  DIR/latency_vs_context.png  DIR/memory_vs_context.png

Each artifact is written atomically by `export_model` (its own gate: nothing written past tolerance). A
failure in one target × quant is recorded and the others still run; the caller turns failures into a
non-zero exit after the report is written.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import RetNetConfig
from .contract import MANIFEST_FILE, tokenizer_file
from .errors import ConfigError, RetNetEdgeError
from .exporters import TARGETS, export_model
from .exporters.pipeline import check_steps
from .inspection import kv_cache_bytes
from .io_utils import atomic_write_text, check_distinct, usable_output
from .loader import load_config
from .paths import resolve_path
from .progress import stages
from .quant import QuantConfig
from .quality import agreement, heldout_text, perplexity, reference_stream
from .report import render_markdown

DEFAULT_TARGETS = ("onnx", "executorch")
DEFAULT_QUANTS = ("int8", "int4")
BENCH_CONTEXTS = (0, 2048)
BENCH_TOKENS, BENCH_REPEAT = 32, 3
REPORT_JSON, REPORT_MD = "report.json", "report.md"


@dataclass
class BundleSpec:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    quants: list[str] = field(default_factory=lambda: list(DEFAULT_QUANTS))
    group_size: int = 32
    lm_head: str = "auto"
    embedding: str = "fp32"
    prefill_weights: str = "same"  # applies to the int4 artifacts of the targets that offer it
    flavor: str | None = None
    steps: int = 64
    bench: bool = True
    force: bool = False
    streamed: bool | None = None  # None: one layer at a time where the target can (export_model's streamed)

    def check(self) -> None:
        """Every name and number is checked before the first export starts (not after an hour of work)."""
        if not self.targets or not self.quants:
            raise ConfigError("--target and --quant need at least one value each")
        for t in self.targets:
            TARGETS.get(t)
        for q in self.quants:
            self.quant_config(q)
        QuantConfig("int4", prefill_weights=self.prefill_weights)  # a bad value, whichever quants are asked
        if self.prefill_weights != "same" and not any(
                q == "int4" and self.prefill_weights in TARGETS.get(t).prefill_weights
                for q in self.quants for t in self.targets):
            raise ConfigError(f"--prefill-weights {self.prefill_weights} applies to ONNX int4 artifacts, and this "
                              "export makes none")
        check_steps(self.steps)
        if self.flavor is not None and not any(self.flavor in TARGETS.get(t).options.get("flavor", ())
                                               for t in self.targets):
            raise ConfigError(f"--flavor {self.flavor} is not a flavor of {', '.join(self.targets)}")
        if len(set(self.targets)) != len(self.targets) or len(set(self.quants)) != len(self.quants):
            raise ConfigError("--target and --quant must not repeat a value")

    def quant_config(self, quant: str, target: str | None = None) -> QuantConfig:
        """The QuantConfig of one artifact: --prefill-weights goes to int4 artifacts whose target offers it."""
        pw = self.prefill_weights if quant == "int4" and (
            target is None or self.prefill_weights in TARGETS.get(target).prefill_weights) else "same"
        return QuantConfig(scheme=quant, group_size=self.group_size, lm_head=self.lm_head, embedding=self.embedding,
                           prefill_weights=pw)

    def options(self, target: str) -> dict | None:
        choices = TARGETS.get(target).options.get("flavor", ())
        if not choices:
            return None
        return {"flavor": self.flavor if self.flavor in choices else choices[0]}


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
        raise RetNetEdgeError(f"{out} already exists", hint="pass --force to replace the artifacts in it")


def _worst(validation) -> dict | None:
    if not isinstance(validation, dict) or not validation.get("checks"):
        return None
    w = max(validation["checks"], key=lambda c: c["kl"])
    return {"top1": w["top1"], "top1_confident": w.get("top1_confident"), "kl": w["kl"],
            "rounding_kl": w.get("rounding_kl"), "max_rel": w["max_rel"], "check": w["name"]}


def _source_summary(src: Path, cfg: RetNetConfig) -> dict:
    from .inspection import parameter_count

    return {"path": str(src), "parameters": parameter_count(cfg), "config": cfg.to_dict(),
            "state_bytes_per_sequence": cfg.state_bytes(1),
            "kv_cache_bytes_fp16": {str(t): kv_cache_bytes(cfg, t) for t in (2048, 8192, 32768)}}


def export_bundle(model: str, output: str | Path, spec: BundleSpec, log: Callable[[str], None] = lambda s: None,
                  show_bar: bool = False) -> dict:
    """Export, gate, score and bench every target × quant of `model` into `output`; returns the report."""
    spec.check()
    src = resolve_path(model)
    out = usable_output(output)
    check_distinct(src, out)
    _check_bundle_dir(out, spec.force)
    _, cfg = load_config(src)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, q) for t in spec.targets for q in spec.quants]
    t_start = time.time()
    artifacts: list[dict] = []
    n_stages = 2 * len(jobs) + 1 + (1 if spec.bench else 0)  # export+gate, quality each; the reference; bench
    with stages(n_stages, "export", show_bar, log) as bar:
        for target, quant in jobs:
            name = f"{target}-{quant}"
            bar.stage(f"{name}: export + gate")
            bar.log(f"[{name}] exporting to {out / name}")
            t0 = time.time()
            rec: dict = {"name": name, "target": target, "quant": quant, "path": str(out / name)}
            try:
                art = export_model(src, target, spec.quant_config(quant, target), out / name, force=True, steps=spec.steps,
                                   streamed=spec.streamed,
                                   options=spec.options(target), log=lambda s: bar.log(f"[{name}] {s}"))
                files = art.manifest["files"]
                rec.update(status="ok", bytes=sum(f["bytes"] for f in files.values()),
                           files={k: v["bytes"] for k, v in files.items()}, parity=_worst(art.manifest["validation"]),
                           quant_fallbacks=art.manifest.get("quant_fallbacks", []))
            except RetNetEdgeError as exc:
                rec.update(status="failed", error=str(exc), exit_code=exc.exit_code)
                bar.log(f"[{name}] FAILED: {exc}")
            except Exception as exc:  # a bug in one exporter must not cost the user the other artifacts
                rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", exit_code=1)
                bar.log(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            rec["export_seconds"] = round(time.time() - t0, 1)
            artifacts.append(rec)
            bar.done()
        ok = [a for a in artifacts if a["status"] == "ok"]
        bar.stage("quality: fp32 reference")
        quality_ref = _quality(src, ok, bar)
        plots: list[str] = []
        if spec.bench and ok:
            bar.stage("bench")
            plots = _bench(ok, out, bar)
            bar.done()
    report = {"tool": "retnet-edge export", "output": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
              "source": _source_summary(src, cfg), "quality_reference": quality_ref,
              "spec": {k: v for k, v in asdict(spec).items() if k != "force"},
              "artifacts": artifacts, "plots": plots, "seconds": round(time.time() - t_start, 1),
              "failed": [a["name"] for a in artifacts if a["status"] != "ok"]}
    atomic_write_text(out / REPORT_JSON, _json(report))
    atomic_write_text(out / REPORT_MD, render_markdown(report))
    return report


def _json(report: dict) -> str:
    import json

    return json.dumps(report, indent=2, default=str)


def _quality(src: Path, ok: list[dict], bar) -> dict | None:
    """Score every exported artifact; returns what the fp32 reference scored (the baseline of the column)."""
    from .runtimes import load_runner
    from .tokenizer import load_tokenizer

    tok_file = tokenizer_file(src) if src.is_dir() else None
    text_file = heldout_text(src) if src.is_dir() else None
    if not ok:
        bar.done(1)
        return None
    reference = load_runner(src)
    if text_file and tok_file:
        tok = load_tokenizer(tok_file)
        text = text_file.read_text(encoding="utf-8")
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
            runner = load_runner(a["path"])
            if ref["metric"] == "perplexity":
                q = perplexity(runner, tok, text)
                q["delta_vs_fp32"] = q["perplexity"] - ref["perplexity"]
            else:
                q = agreement(reference, runner, stream)
            a["quality"] = q
            bar.log(f"[{a['name']}] quality: " + (f"perplexity {q['perplexity']:.3f} (fp32 {ref['perplexity']:.3f})"
                                                   if "perplexity" in q else f"KL {q['kl']:.2e}, top-1 {q['top1']:.3f}"))
        except RetNetEdgeError as exc:
            a["quality"] = {"error": str(exc)}
            bar.log(f"[{a['name']}] quality pass failed: {exc}")
        bar.done()
    return ref


def _bench(ok: list[dict], out: Path, bar) -> list[str]:
    """A short bench of every artifact: decode ms/token at context 0 and 2048 (1 thread), RSS, state bytes."""
    from .bench import BenchConfig, run_bench

    bc = BenchConfig(contexts=list(BENCH_CONTEXTS), tokens=BENCH_TOKENS, threads=[1], repeat=BENCH_REPEAT,
                     baseline=None)
    try:
        doc = run_bench([a["path"] for a in ok], bc, log=bar.log)
    except RetNetEdgeError as exc:
        bar.log(f"bench failed: {exc}")
        for a in ok:
            a["bench"] = {"error": str(exc)}
        return []
    for a in ok:
        rows = sorted((r for r in doc["results"] if r["artifact"] == a["path"]), key=lambda r: r["context"])
        a["bench"] = {"threads": 1, "runtime": rows[0]["runtime"] if rows else None,
                      "by_context": {str(r["context"]): {"ms_per_token": r["ms_per_token_median"],
                                                         "tokens_per_s": r["tokens_per_s"], "rss_mb": r["rss_mb"],
                                                         "state_bytes": r["state_bytes"],
                                                         "roof_fraction": r["roof_fraction"]} for r in rows}}
    try:
        from .bench.plots import write_plots

        return [p.name for p in write_plots(doc, out)]
    except RetNetEdgeError as exc:  # matplotlib is in the bench extra
        bar.log(f"no plot: {exc}")
        return []
