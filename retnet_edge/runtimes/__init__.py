"""Runners: one interface over eager PyTorch and every exported artifact.

`load_runner(path)` opens the runtime an artifact's manifest names (`target`), or the eager runtime for
a model checkpoint, and wraps its session in a `Runner` (reset, prefill, step, save_state, load_state).
"""
from __future__ import annotations

from pathlib import Path

from ..contract import MANIFEST_FILE
from ..io_utils import read_json
from ..paths import resolve_path
from .registry import RUNTIMES
from .session_runner import Runner

__all__ = ["RUNTIMES", "Runner", "load_runner", "runtime_of"]


def runtime_of(path: Path) -> str:
    """The runtime for a path: the artifact's target from its manifest, else "eager" (a checkpoint)."""
    manifest = path / MANIFEST_FILE if path.is_dir() else None
    if manifest is not None and manifest.is_file():
        return str(read_json(manifest).get("target"))
    return "eager"


def load_runner(path: str | Path, threads: int | None = None) -> Runner:
    """A runner for a model path (`demo`, checkpoint dir) or an exported artifact directory."""
    p = resolve_path(path)
    name = runtime_of(p)
    session = RUNTIMES.get(name)(p, threads)
    return Runner(session, p if p.is_dir() else None)
