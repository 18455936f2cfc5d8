"""Export pipeline: load → step rewrite → quantization plan → target export → validate → manifest → rename.

Targets are `TARGETS` entries; each is validated through the runtime of the same name against the eager
reference. Nothing is written at `output` unless validation passes (or was explicitly skipped).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract import MANIFEST_FILE, tokenizer_file
from ..errors import ArtifactError, ConfigError
from ..io_utils import atomic_output_dir, check_distinct, release_freed_memory
from ..loader import load, resolve_path
from ..quant import QuantConfig
from ..runtimes import RUNTIMES, check_config_matches
from ..runtimes.eager import EagerSession
from ..step import to_recurrent
from ..tokenizer import load_tokenizer
from ..manifest import read_manifest, write_manifest
from ..progress import stages
from ..streaming import open_weights
from .target import STREAMED, TARGETS
from .divergence import LayerTable, default_positions, state_divergence
from .validate import ValidationReport, raise_if_failed, validate, validation_tokens


@dataclass
class Artifact:
    path: Path
    manifest: dict


def _log_report(report: ValidationReport, log) -> None:
    for c in report.checks:
        conf = (f"{c.top1_confident:.3f} where eager is confident ({c.confident} positions)"
                if c.top1_confident is not None else f"n/a where confident ({c.confident} positions)")
        rounding = f", rounding alone: KL {c.rounding_kl:.2e}" if c.rounding_kl is not None else ""
        log(f"    {c.name}: max rel {c.max_rel:.2e}, top-1 {c.top1:.3f} ({conf}), KL {c.kl:.2e}{rounding}")
    log(f"    eager noise floor (step loop vs chunk graph): {report.noise_floor:.1e}")


def rounded_reference(step, plan) -> EagerSession | None:
    """Eager PyTorch with the plan's rounded weights: the quantization's own error (None for fp32)."""
    from .fake_quant import fake_quantize

    return EagerSession(fake_quantize(step, plan)) if plan.quantizes_anything else None


def check_steps(steps: int) -> None:
    """The gate splits its tokens 3:1 between the prompt and the step paths: it needs a few of each."""
    if not (isinstance(steps, int) and 4 <= steps <= 100_000):
        raise ConfigError(f"--steps must be between 4 and 100000, got {steps}")


def export_model(model_path: str | Path, target: str, qc: QuantConfig, output: str | Path, force: bool = False,
                 steps: int = 64, options: dict | None = None, validate_artifact: bool = True,
                 log=lambda s: None, show_bar: bool = False, streamed: bool | None = None) -> Artifact:
    """Export, validate against eager fp32, and write the artifact atomically (ParityError: nothing written).

    With validate_artifact=False the gate is skipped, said on the log, and the manifest records
    `"validation": "skipped"` (for benchmarks of random weights; `verify` reruns the gate later).
    `streamed` (default: wherever the target has one, `target.STREAMED`) reads the checkpoint one layer at
    a time — export and gate alike — so peak memory does not grow with the depth; False loads the whole
    fp32 model and traces it (the reference path the streamed one is tested against).
    """
    tgt = TARGETS.get(target)
    tgt.check(qc)
    check_steps(steps)
    src = resolve_path(model_path)
    check_distinct(src, output)
    if streamed is None:
        streamed = target in STREAMED
    elif streamed and target not in STREAMED:
        raise ConfigError(f"the {target} target has no streamed export")
    with stages(4, f"{target} {qc.scheme.value}", show_bar, log) as bar:
        return _export(src, tgt, target, qc, output, force, steps, options, validate_artifact, bar, streamed)


@dataclass
class _Prepared:
    """What the export and the gate start from: the whole model, or a checkpoint read layer by layer."""

    cfg: object
    plan: object
    parameters: int
    export: object  # () -> the target's file writer bound to its input
    reference: object
    rounded: object
    streamed: bool = False


def _prepare(src: Path, tgt, target: str, qc: QuantConfig, streamed: bool) -> _Prepared:
    weights = open_weights(src) if streamed else None
    if weights is not None:
        from .reference import StreamedReference

        plan = tgt.config_plan(weights.cfg, qc)
        fn = STREAMED[target]
        return _Prepared(weights.cfg, plan, weights.num_parameters(),
                         lambda *a, **k: fn(weights, qc, plan, *a, **k), StreamedReference(weights),
                         StreamedReference(weights, plan) if plan.quantizes_anything else None, streamed=True)
    model = load(src)
    step = to_recurrent(model)
    plan = tgt.plan(step, qc)
    return _Prepared(model.cfg, plan, model.num_parameters(), lambda *a, **k: tgt.export(step, qc, plan, *a, **k),
                     EagerSession(step), rounded_reference(step, plan))


def _export(src: Path, tgt, target: str, qc: QuantConfig, output, force: bool, steps: int, options: dict | None,
            validate_artifact: bool, bar, streamed: bool) -> Artifact:
    log = bar.log
    t0 = time.time()
    bar.stage("load")
    prep = _prepare(src, tgt, target, qc, streamed)
    cfg, plan = prep.cfg, prep.plan
    tok_file = tokenizer_file(src) if src.is_dir() else None
    log(f"loaded {src} ({prep.parameters:,} parameters) in {time.time() - t0:.1f} s; exporting {target} "
        f"{qc.scheme.value}" + (" (streamed: one layer at a time)" if prep.streamed else ""))
    bar.done()
    with atomic_output_dir(output, force=force) as tmp:
        if tok_file:  # first: an exporter may read it (the genai flavour's tokenizer_config.json)
            shutil.copyfile(tok_file, tmp / tok_file.name)
        bar.stage("trace, quantize, write")
        files = prep.export(tmp, tok_file.name if tok_file else None, log, **(options or {}))
        bar.done()
        bar.stage("validate")
        if validate_artifact:
            release_freed_memory()  # what the export freed goes back before the gate's sessions grow
            log(f"  validating {steps} steps against eager fp32 ...")
            session = RUNTIMES.get(target)(tmp, None)
            report = validate(prep.reference, session, qc, cfg.vocab_size, steps,
                              tokenizer=load_tokenizer(tok_file) if tok_file else None, rounded=prep.rounded)
            _log_report(report, log)
            raise_if_failed(report, f"{target} {qc.scheme.value} export")
            validation: dict | str = report.to_dict()
        else:
            log("  validation SKIPPED (--no-validate): this artifact was not checked against eager PyTorch")
            validation = "skipped"
        bar.done()
        bar.stage("manifest")
        manifest = write_manifest(tmp, {
            "target": target, "graphs": files, "quant": qc.to_dict(), "config": cfg.to_dict(),
            "quant_fallbacks": list(plan.fallbacks),
            "source": str(Path(src).resolve()), "tokenizer": tok_file.name if tok_file else None,
            "state_bytes_per_sequence": cfg.state_bytes(1), "validation": validation,
            "export_seconds": round(time.time() - t0, 1), "streamed": prep.streamed, **({"options": options} if options else {})})
        bar.done()
    return Artifact(Path(output), manifest)


@dataclass
class Verification:
    """`verify` of one artifact: the gate rerun, and where its state leaves eager's (None: not readable)."""

    path: Path
    report: ValidationReport
    states: LayerTable | None

    def to_dict(self) -> dict:
        return {"artifact": str(self.path), **self.report.to_dict(),
                "state_divergence": self.states.to_dict() if self.states else
                "not readable: this program keeps its state inside (ExecuTorch runner flavour); logits only"}


def verify_artifact(artifact: str | Path, model_path: str | None = None, steps: int = 64,
                    positions: list[int] | None = None, log=lambda s: None) -> Verification:
    """Re-check an artifact's files against its manifest's sha256, rerun its validation gate against the
    source model, and compare the recurrent state layer by layer at `positions` (default: 1, 4, 16, …)."""
    check_steps(steps)
    directory = Path(artifact)
    manifest = read_manifest(directory, check_hashes=True)
    source = model_path or manifest.get("source")
    if not source or (source != "demo" and not Path(source).exists()):
        raise ArtifactError(f"the source model {source!r} of {directory} is not available",
                            hint="pass --model PATH to the model it was exported from")
    if manifest.get("validation") == "skipped":
        log(f"  {directory} was exported with --no-validate; running the gate now")
    positions = positions or default_positions(steps)
    if max(positions) > steps or min(positions) < 1:
        raise ConfigError(f"--positions must lie in 1..{steps} (--steps)")
    model = load(source)
    qc = QuantConfig(**{k: manifest["quant"][k] for k in ("scheme", "group_size", "lm_head", "embedding")},
                     prefill_weights=manifest["quant"].get("prefill_weights", "same"))
    tok = manifest.get("tokenizer")
    tokenizer = load_tokenizer(directory / tok) if tok else None
    session = RUNTIMES.get(manifest["target"])(directory, None)
    check_config_matches(manifest, session.cfg, directory)
    step = to_recurrent(model)
    reference = EagerSession(step)
    report = validate(reference, session, qc, model.cfg.vocab_size, steps, tokenizer=tokenizer,
                      rounded=rounded_reference(step, TARGETS.get(manifest["target"]).plan(step, qc)))
    _log_report(report, log)
    ids = validation_tokens(model.cfg.vocab_size, 1, steps, tokenizer, seed=1)
    states = state_divergence(reference, session, ids, positions, qc.scheme.value)
    log(states.render() if states else "    per-layer state: not readable (the state lives inside this program)")
    return Verification(directory, report, states)


def artifact_dirs(path: str | Path) -> list[Path]:
    """An artifact directory itself, or the artifacts of a multi-artifact export directory (sorted)."""
    p = Path(path)
    if (p / MANIFEST_FILE).is_file():
        return [p]
    found = sorted(d for d in p.iterdir() if (d / MANIFEST_FILE).is_file()) if p.is_dir() else []
    if not found:
        raise ArtifactError(f"{p} is not an exported artifact (no {MANIFEST_FILE}) nor a directory of them",
                            hint="for a model, compare its forms with `retnet-edge verify MODEL --forms`")
    return found
