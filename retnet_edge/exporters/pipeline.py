"""Export pipeline: open the checkpoint layer by layer → plan → target export → gate → manifest → rename.

One product path for every target and size: the checkpoint is read one layer at a time (`open_weights`),
by the target's export and by the gate's eager reference alike (`reference.StreamedReference`), so peak
memory does not grow with the depth (7B: ~12 GB). Targets are `TARGETS` entries; each is validated
through the runtime of the same name. Nothing is written at the output unless validation passes (or was
explicitly skipped). The whole-model trace of the same artifacts lives in tests/ as their oracle.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.io_utils import atomic_output_dir, check_distinct, release_freed_memory
from ..base.paths import resolve_path
from ..base.progress import stages
from ..base.tokenizer import load_tokenizer
from ..checkpoints.loader import load
from ..checkpoints.streaming import ModelWeights, open_weights
from ..contract import GENAI_TOKENIZER_CONFIG_FILE as TOKENIZER_CONFIG_FILE
from ..contract import MANIFEST_FILE, tokenizer_file
from ..contract.manifest import Manifest
from ..contract.quant import CALIBRATED_METHODS, QuantConfig
from ..contract.request import MIN_STEPS, ExportRequest, check_steps
from ..errors import ArtifactError, ConfigError, RetNetEdgeError
from ..runtimes import RUNTIMES, RuntimeOptions, check_config_matches
from .divergence import (
    LayerTable,
    default_positions,
    forms_divergence,
    state_divergence,
)
from . import layer_errors
from .calibration import calibration_ids
from .gptq import CODES_DIR, calibrate_plan, worst_layers
from .reference import StreamedReference
from .target import TARGETS
from .validate import ValidationReport, raise_if_failed, validate, validation_tokens


@dataclass
class Artifact:
    path: Path
    manifest: Manifest


def log_report(report: ValidationReport, log) -> None:
    """The gate's checks, one line each, on the export's log."""
    for c in report.checks:
        conf = (f"{c.top1_confident:.3f} where eager is confident ({c.confident} positions)"
                if c.top1_confident is not None else f"n/a where confident ({c.confident} positions)")
        rounding = f", rounding alone: KL {c.rounding_kl:.2e}" if c.rounding_kl is not None else ""
        log(f"    {c.name}: max rel {c.max_rel:.2e}, top-1 {c.top1:.3f} ({conf}), KL {c.kl:.2e}{rounding}")
    log(f"    eager noise floor (step loop vs chunk graph): {report.noise_floor:.1e}")


def references(weights: ModelWeights, target: str, qc: QuantConfig):
    """The gate's references for a target x quant: eager fp32, and eager with the target's rounding (None
    for fp32), both reading the checkpoint layer by layer; and the quantization plan."""
    plan = TARGETS.get(target).config_plan(weights.cfg, qc)
    rounded = StreamedReference(weights, plan) if plan.quantizes_anything else None
    return StreamedReference(weights), rounded, plan


def export_model(model_path: str | Path, target: str, qc: QuantConfig, output: str | Path, force: bool = False,
                 steps: int = 64, options: dict | None = None, validate_artifact: bool = True,
                 log=lambda s: None, show_bar: bool = False, calibration: str | None = None) -> Artifact:
    """`export_artifact` of one request built from these arguments (the library's short form)."""
    options = options or {}
    request = ExportRequest(str(model_path), target, qc, Path(output), options.get("flavor"), steps,
                            validate_artifact, force, calibration, state_op=options.get("state_op", "auto"))
    return export_artifact(request, log, show_bar)


def export_artifact(request: ExportRequest, log=lambda s: None, show_bar: bool = False) -> Artifact:
    """Export, validate against eager fp32, and write the artifact atomically (ParityError: nothing written).

    With request.validate False the gate is skipped, said on the log, and the manifest records
    `"validation": "skipped"` (for benchmarks of random weights; `verify` reruns the gate later)."""
    src = resolve_path(request.model)
    check_distinct(src, request.output)
    with stages(4, f"{request.target} {request.quant.scheme.value}", show_bar, log) as bar:
        return _export(src, request, bar)


def _captured_errors(weights: ModelWeights, plan, tokenizer, log) -> list[dict]:
    """The worst int4 linears of a data-free method's artifact (`layer_errors`), on the model's held-out
    text or else the gate's validation text."""
    try:
        ids, source = calibration_ids(weights, tokenizer, None, layer_errors.TOKENS)
    except ConfigError as exc:  # a diagnostic: a held-out text too short to read must not fail the export
        log(f"  per-layer int4 errors not measured: {exc}")
        return []
    log(f"  measuring each int4 linear's output error on {source} ...")
    return worst_layers(layer_errors.layer_errors(weights, plan, plan.capture, ids, log))


def _export(src: Path, request: ExportRequest, bar) -> Artifact:
    log, qc, target = bar.log, request.quant, request.target
    t0 = time.time()
    bar.stage("load")
    weights = open_weights(src)
    cfg = weights.cfg
    reference, rounded, plan = references(weights, target, qc)
    tok_file = tokenizer_file(src) if src.is_dir() else None
    log(f"loaded {src} ({weights.num_parameters():,} parameters) in {time.time() - t0:.1f} s; exporting {target} "
        f"{qc.scheme.value} (one layer at a time)")
    bar.done()
    with atomic_output_dir(request.output, force=request.force) as tmp:
        if tok_file:  # first: an exporter may read it (the genai flavour's tokenizer_config.json)
            shutil.copyfile(tok_file, tmp / tok_file.name)
            copy_chat_config(src, tmp, log)
        bar.stage("trace, quantize, write")
        quant_layers: list[dict] = []
        if request.auto:  # `--quant auto`: the mix measured here, in the temporary directory, its codes written
            from .sensitivity import auto_plan, log_plan

            qc, record, codes = auto_plan(weights, target, qc, qc.max_kl,
                                          load_tokenizer(tok_file) if tok_file else None, request.calibration,
                                          tmp / CODES_DIR, log)
            log_plan(record, log)
            reference, rounded, plan = references(weights, target, qc)
            plan = dataclasses.replace(plan, codes=codes)
            quant_layers = codes.worst() if codes is not None else []
        # an int4 artifact of a calibrated method, or a measured mix given as a QuantConfig (its int8 linears
        # are GPTQ's even where no linear fits int4: the bound was measured so)
        measured = plan.codes is not None  # --quant auto's gptq codes, from just above
        if not measured and qc.int4_method in CALIBRATED_METHODS and (plan.modules("int4") or qc.max_kl):
            plan, qc = calibrate_plan(weights, plan, qc, request.calibration,
                                      load_tokenizer(tok_file) if tok_file else None, tmp / CODES_DIR, log,
                                      TARGETS.get(target).int4_negative_scales)
            quant_layers = plan.codes.worst() if plan.codes is not None else []
        elif not measured and plan.modules("int4") and tok_file \
                and weights.num_parameters() <= layer_errors.MAX_PARAMETERS:
            plan = dataclasses.replace(plan, capture=layer_errors.Captured(tmp / layer_errors.CAPTURE_DIR))
        elif not measured and plan.modules("int4"):
            log("  per-layer int4 errors not measured: " + ("the model has no tokenizer for text" if not tok_file
                else f"past {layer_errors.MAX_PARAMETERS / 1e9:.0f}B parameters (a full fp16 copy of the weights)"))
        files = TARGETS.get(target).export(weights, qc, plan, tmp, tok_file.name if tok_file else None, log,
                                           **request.options)
        shutil.rmtree(tmp / CODES_DIR, ignore_errors=True)  # the codes are in the artifact's own files now
        if plan.capture is not None:  # a data-free method: the errors of what the target wrote
            quant_layers = _captured_errors(weights, plan, load_tokenizer(tok_file), log)
            shutil.rmtree(tmp / layer_errors.CAPTURE_DIR, ignore_errors=True)
        if quant_layers:
            log(f"  worst int4 linears (relative output error on calibration text, {qc.int4_method} vs rtn): "
                + ", ".join(f"{x['module']} {x['error']:.2e} vs {x['rtn_error']:.2e}" for x in quant_layers))
        bar.done()
        bar.stage("validate")
        validation = None
        if request.validate:
            release_freed_memory()  # what the export freed goes back before the gate's sessions grow
            log(f"  validating {request.steps} steps against eager fp32 ...")
            session = RUNTIMES.get(target)(tmp, RuntimeOptions(flavor=request.flavor))
            report = validate(reference, session, qc, cfg.vocab_size, request.steps,
                              tokenizer=load_tokenizer(tok_file) if tok_file else None, rounded=rounded)
            log_report(report, log)
            raise_if_failed(report, f"{target} {qc.scheme.value} export")
            validation = report.to_dict()
            for name in session.unchecked_files():  # what the gate could not run here does not ship
                (tmp / name).unlink(missing_ok=True)
                files = [f for f in files if f != name]
                log(f"  {name} left out: the gate could not run it here ({session.unchecked_reason()})")
        else:
            log("  validation SKIPPED (--no-validate): this artifact was not checked against eager PyTorch")
        bar.done()
        bar.stage("manifest")
        manifest = Manifest.write(tmp, target=target, config=cfg, quant=qc, graphs=tuple(files),
                                  options=request.options, tokenizer=tok_file.name if tok_file else None,
                                  source=str(Path(src).resolve()), validation=validation,
                                  quant_fallbacks=tuple(plan.fallbacks), quant_layers=tuple(quant_layers),
                                  export_seconds=round(time.time() - t0, 1))
        bar.done()
    return Artifact(Path(request.output), manifest)


def copy_chat_config(src: Path, out: Path, log) -> None:
    """The source's tokenizer_config.json (its `chat_template`, bos/eos text) goes with the tokenizer, so
    `chat` and `serve` on the artifact speak the model's chat format as on the checkpoint. A file that is not
    a JSON object is left behind with a note: the export does not fail for what only chat reads."""
    import json

    from ..base.confine import read_bounded

    path = src / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    try:
        config = json.loads(read_bounded(path, "tokenizer config"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RetNetEdgeError) as exc:
        log(f"  note: {path} not copied ({str(exc).splitlines()[0][:120]}): chat on the artifact has no template")
        return
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


@dataclass
class Verification:
    """`verify` of one artifact: the gate rerun, where its state leaves eager's (None: not readable), and
    files in the artifact its manifest does not list."""

    path: Path
    report: ValidationReport
    states: LayerTable | None
    unlisted: list[str]

    def to_dict(self) -> dict:
        return {"artifact": str(self.path), **self.report.to_dict(), "unlisted_files": self.unlisted,
                "state_divergence": self.states.to_dict() if self.states else
                "not readable: this program keeps its state inside (ExecuTorch runner flavour); logits only"}


def verify_artifact(artifact: str | Path, model_path: str | None = None, steps: int = 64,
                    positions: list[int] | None = None, log=lambda s: None) -> Verification:
    """Re-check an artifact's files against its manifest's sha256, rerun its validation gate against the
    source model, and compare the recurrent state layer by layer at `positions` (default: 1, 4, 16, …).

    The source is read one layer at a time, as the export reads it: verifying a 7B artifact needs the
    export's memory, not the whole fp32 model's."""
    check_steps(steps)
    directory = Path(artifact)
    manifest = Manifest.load(directory, check_hashes=True)
    source = model_path or manifest.source
    if not source or (source != "demo" and not Path(source).exists()):
        raise ArtifactError(f"the source model {source!r} of {directory} is not available",
                            hint="pass --model PATH to the model it was exported from")
    if manifest.validation is None:
        log(f"  {directory} was exported with --no-validate; running the gate now")
    unlisted = manifest.unlisted_files(directory)
    if unlisted:
        log(f"  {directory} holds files its manifest does not list (ignored): {', '.join(unlisted[:8])}")
    positions = positions or default_positions(steps)
    if max(positions) > steps or min(positions) < 1:
        raise ConfigError(f"--positions must lie in 1..{steps} (--steps)")
    weights = open_weights(resolve_path(source))
    qc = manifest.quant_config()
    reference, rounded, _ = references(weights, manifest.target, qc)
    tokenizer = load_tokenizer(directory / manifest.tokenizer) if manifest.tokenizer else None
    session = RUNTIMES.get(manifest.target)(directory, RuntimeOptions(flavor=manifest.flavor))
    check_config_matches(manifest, session.cfg, directory)
    if session.cfg != weights.cfg:
        raise ArtifactError(f"{directory} was exported from another model than {source} (their configs differ)",
                            hint="pass --model PATH to the model it was exported from")
    report = validate(reference, session, qc, weights.cfg.vocab_size, steps, tokenizer=tokenizer, rounded=rounded)
    report.failures += [f"not checked: {u} (verify where there is room)" for u in report.unchecked]
    log_report(report, log)
    ids = validation_tokens(weights.cfg.vocab_size, 1, steps, tokenizer, seed=1)
    states = state_divergence(reference, session, ids, positions, qc.scheme.value)
    log(states.render() if states else "    per-layer state: not readable (the state lives inside this program)")
    return Verification(directory, report, states, unlisted)


MAX_FORMS_STEPS = 4096  # the parallel form is O(T^2)


def verify_forms(path: str | Path, steps: int = 64, positions: list[int] | None = None, log=lambda s: None) -> dict:
    """The source model's parallel, chunkwise and recurrent forms on the same tokens, layer by layer
    (`divergence.forms_divergence`); the tables go to the log, the document says whether they agree."""
    if not (isinstance(steps, int) and MIN_STEPS <= steps <= MAX_FORMS_STEPS):
        raise ConfigError(f"--steps must be between {MIN_STEPS} and {MAX_FORMS_STEPS} with --forms (the parallel "
                          f"form is O(T^2)), got {steps}")
    positions = positions or default_positions(steps)
    if min(positions) < 1 or max(positions) > steps:
        raise ConfigError(f"--positions must lie in 1..{steps} (--steps)")
    src = resolve_path(path)
    model = load(src)
    tok = tokenizer_file(src) if src.is_dir() else None
    ids = validation_tokens(model.cfg.vocab_size, 1, steps, load_tokenizer(tok) if tok else None, seed=1)
    r = forms_divergence(model, ids, positions)
    for t in r["tables"]:
        log(t.render())
    return {**r, "tables": [t.to_dict() for t in r["tables"]], "model": str(path)}


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
