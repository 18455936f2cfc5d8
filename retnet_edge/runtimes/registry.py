"""Runtimes as registry entries: artifact target (or "eager") -> a function opening its StepSession.

Each runtime module registers its opener with `@RUNTIMES.register(name)`; heavy engines (onnxruntime,
executorch) are imported inside the opener, so registering costs nothing and `--help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..contract import StepSession
from ..errors import ArtifactError
from ..registry import Registry

Opener = Callable[[Path, "int | None"], StepSession]  # (artifact or model path, threads) -> session

RUNTIMES: Registry[Opener] = Registry("runtime", ArtifactError)
