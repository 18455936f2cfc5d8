"""Exporters: the pipeline (`export_model`, `verify_artifact`) and the targets it knows (`TARGETS`).

Importing the package registers every target; each target module imports its engine (onnxruntime,
executorch, torchao) only when it runs.
"""
from __future__ import annotations

from . import executorch, onnx  # noqa: F401  (each registers its target)
from .pipeline import Artifact, export_artifact, export_model, verify_artifact
from .target import TARGETS, Target

__all__ = ["TARGETS", "Target", "Artifact", "export_artifact", "export_model", "verify_artifact"]
