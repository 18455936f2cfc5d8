"""Exporters: the one export path (`pipeline`: checkpoint read layer by layer → plan → target → gate →
manifest) and the targets it knows (`TARGETS`).

Owns: `target` (the registry and the quantization plan), `pipeline` (`export_artifact`, `verify_artifact`,
`verify_forms`), `onnx/` and `executorch` (the targets, each with its own step core), `reference` (the
gate's layer-streamed eager reference), `fake_quant` (eager with the plan's rounding), `validate` (the
generic gate), `divergence` (per-layer state tables). Importing the package registers every target; each
imports its engine (onnxruntime, executorch, torchao) only when it runs. May import: `base`, `core`,
`contract`, `checkpoints`, `runtimes` (the gate runs an artifact through its runtime).
"""
from __future__ import annotations

from . import executorch, onnx  # noqa: F401  (each registers its target)
from .pipeline import Artifact, export_artifact, export_model, verify_artifact
from .target import TARGETS, Target

__all__ = ["TARGETS", "Target", "Artifact", "export_artifact", "export_model", "verify_artifact"]
