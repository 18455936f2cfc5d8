"""Runners: one interface over eager PyTorch and every exported artifact.

`load_runner(path)` picks the runtime from an artifact's manifest.json (`target`), or the eager runner
for a model checkpoint. Every runner owns its recurrent state and offers `reset`, `prefill`, `step`,
`save_state` and `load_state`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..errors import CheckpointError


class Runner(Protocol):
    """Batch-1 decoding with an owned recurrent state."""

    cfg: object  # RetNetConfig
    position: int  # tokens consumed since reset
    tokenizer_dir: Path | None

    def reset(self) -> None: ...

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Consume ids from the current position; logits for every one of them [T, V]."""

    def step(self, token: int) -> np.ndarray:
        """Consume one token; logits [V] for the next."""

    def save_state(self, path: str | Path) -> None: ...

    def load_state(self, path: str | Path) -> None: ...


RUNTIMES: dict[str, Callable[..., Runner]] = {}


def register_runtime(target: str):
    def wrap(factory):
        RUNTIMES[target] = factory
        return factory

    return wrap


def load_runner(path: str | Path, threads: int | None = None) -> Runner:
    """A runner for a model path (`demo`, checkpoint dir) or an exported artifact directory."""
    from ..loader import resolve_path

    p = resolve_path(path)
    manifest = p / "manifest.json" if p.is_dir() else None
    if manifest is not None and manifest.is_file():
        from ..io_utils import read_json

        target = read_json(manifest).get("target")
        if target == "onnx":
            from . import onnxruntime  # noqa: F401  (registers itself)
        elif target == "executorch":
            from . import executorch  # noqa: F401
        if target not in RUNTIMES:
            raise CheckpointError(f"{manifest}: unknown artifact target {target!r}")
        return RUNTIMES[target](p, threads=threads)
    from .eager import EagerRunner

    return EagerRunner.from_path(p, threads=threads)
