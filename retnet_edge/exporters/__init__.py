"""Export pipeline: load → step rewrite → backend export + quantize → validate → manifest → rename.

Backends are registry entries (`TARGETS`): an export function writing files into a directory and a
session factory the generic validator runs. Nothing is written at `output` unless validation passes.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, ExportError
from ..io_utils import atomic_output_dir
from ..quant import QuantConfig
from .manifest import read_manifest, write_manifest
from .validate import ValidationReport, raise_if_failed, validate


@dataclass(frozen=True)
class Target:
    name: str
    export: Callable  # (step, QuantConfig, out_dir, tokenizer_name, log) -> list[str]
    open_session: Callable  # (artifact_dir) -> StepSession


def _onnx_target() -> Target:
    from ..runtimes.onnxruntime import OnnxSession
    from .onnx import export_onnx

    return Target("onnx", export_onnx, OnnxSession)


def _executorch_target() -> Target:
    from ..runtimes.executorch import ExecuTorchSession
    from .executorch import export_executorch

    return Target("executorch", export_executorch, ExecuTorchSession)


TARGETS: dict[str, Callable[[], Target]] = {"onnx": _onnx_target, "executorch": _executorch_target}


@dataclass
class Artifact:
    path: Path
    manifest: dict


def _tokenizer_file(model_dir: Path) -> Path | None:
    for name in ("tokenizer.json", "tokenizer.model"):
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise CheckpointError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    try:
        return TARGETS[name]()
    except ImportError as exc:
        raise ExportError(f"the {name} target needs a package that is not installed ({exc.name})",
                          hint="pip install 'executorch==1.5.1' onnxruntime onnx onnxscript") from None


def export_model(model_path: str, target: str, qc: QuantConfig, output: str | Path, force: bool = False,
                 steps: int = 64, options: dict | None = None, log=lambda s: None) -> Artifact:
    """Export, validate against eager fp32, and write the artifact atomically (ParityError: nothing written)."""
    from ..loader import load, resolve_path
    from ..runtimes.eager import EagerSession
    from ..step import to_recurrent
    from ..tokenizer import load_tokenizer

    tgt = get_target(target)
    src = resolve_path(model_path)
    t0 = time.time()
    model = load(src)
    step = to_recurrent(model)
    tok_file = _tokenizer_file(src) if src.is_dir() else None
    log(f"loaded {src} ({model.num_parameters():,} parameters) in {time.time() - t0:.1f} s; exporting {target} "
        f"{qc.scheme.value}")
    with atomic_output_dir(output, force=force) as tmp:
        files = tgt.export(step, qc, tmp, tok_file.name if tok_file else None, log, **(options or {}))
        if tok_file:
            shutil.copyfile(tok_file, tmp / tok_file.name)
        log(f"  validating {steps} steps against eager fp32 (batch 1 and 3) ...")
        tokenizer = load_tokenizer(tok_file) if tok_file else None
        session = tgt.open_session(tmp)
        report = validate(EagerSession(step), session, qc, model.cfg.vocab_size, steps,
                          batches=getattr(session, "batch_sizes", (1, 3)), tokenizer=tokenizer)
        for c in report.checks:
            log(f"    {c.name}: max rel {c.max_rel:.2e}, top-1 {c.top1:.3f}, KL {c.kl:.2e}")
        log(f"    eager noise floor (step loop vs chunk graph): {report.noise_floor:.1e}")
        raise_if_failed(report, f"{target} {qc.scheme.value} export")
        manifest = write_manifest(tmp, {
            "target": target, "graphs": files, "quant": qc.to_dict(), "config": model.cfg.to_dict(),
            "source": str(Path(src).resolve()), "tokenizer": tok_file.name if tok_file else None,
            "state_bytes_per_sequence": model.cfg.state_bytes(1), "validation": report.to_dict(),
            "export_seconds": round(time.time() - t0, 1), **({"options": options} if options else {})})
    return Artifact(Path(output), manifest)


def verify_artifact(artifact: str | Path, model_path: str | None = None, steps: int = 64,
                    log=lambda s: None) -> ValidationReport:
    """Rerun the validation gate of an existing artifact against its source model."""
    from ..loader import load
    from ..runtimes.eager import EagerSession
    from ..step import to_recurrent
    from ..tokenizer import load_tokenizer

    directory = Path(artifact)
    manifest = read_manifest(directory)
    source = model_path or manifest.get("source")
    if not source or (source != "demo" and not Path(source).exists()):
        raise CheckpointError(f"the source model {source!r} of {directory} is not available",
                              hint="pass --model PATH to the model it was exported from")
    model = load(source)
    qc = QuantConfig(**{k: manifest["quant"][k] for k in ("scheme", "group_size", "lm_head", "embedding")})
    tok = manifest.get("tokenizer")
    session = get_target(manifest["target"]).open_session(directory)
    report = validate(EagerSession(to_recurrent(model)), session, qc, model.cfg.vocab_size, steps,
                      batches=getattr(session, "batch_sizes", (1, 3)),
                      tokenizer=load_tokenizer(directory / tok) if tok else None)
    for c in report.checks:
        log(f"  {c.name}: max rel {c.max_rel:.2e}, top-1 {c.top1:.3f}, KL {c.kl:.2e}")
    return report
