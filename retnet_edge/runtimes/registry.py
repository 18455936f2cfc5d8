"""Runtimes as registry entries: artifact target (or "eager") -> a function opening its StepSession.

`RUNTIME_MODULES` names the module and opener of each runtime; a module (and its engine: torch,
onnxruntime, executorch) is imported only when an artifact of its kind is opened, so running an ONNX
artifact never imports torch and the base install (no torch) can run it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ..base.registry import Registry
from ..contract import StepSession
from ..errors import ArtifactError, missing_extra
from .options import RuntimeOptions

Opener = Callable[[Path, RuntimeOptions], StepSession]  # (artifact or model path, options) -> session

RUNTIMES: Registry[Opener] = Registry("runtime", ArtifactError)

# runtime name (a manifest's "target", or "eager" for a checkpoint) -> (module in this package, opener)
RUNTIME_MODULES = {"onnx": ("onnxruntime", "open_onnx"), "executorch": ("executorch", "open_executorch"),
                   "eager": ("eager", "open_eager")}


def _lazy(module: str, opener: str) -> Opener:
    def open_session(path: Path, options: RuntimeOptions | None = None) -> StepSession:
        try:
            fn = getattr(importlib.import_module(f"{__package__}.{module}"), opener)
        except ModuleNotFoundError as exc:
            raise (missing_extra(exc) or exc) from exc
        return fn(path, options or RuntimeOptions())

    open_session.__name__ = opener
    return open_session


for _name, (_module, _opener) in RUNTIME_MODULES.items():
    RUNTIMES.register(_name)(_lazy(_module, _opener))
