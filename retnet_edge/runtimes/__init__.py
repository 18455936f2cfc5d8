"""Runners: one interface over eager PyTorch and every exported artifact.

`load_runner(path)` opens the runtime an artifact's manifest names (`target`), or the eager runtime for
a model checkpoint, and wraps its session in a `Runner` (reset, prefill, step, save_state, load_state).
How a runtime runs is set by `RuntimeOptions` (threads, the ONNX step graph, thread spinning), passed
as parameters (the CLI exposes them as options), never read from the environment.

May import: base, core (config), contract; torch and the engines only inside a runtime's own module,
imported when an artifact of its kind is opened (`registry.RUNTIME_MODULES`).
"""
from __future__ import annotations

from pathlib import Path

from ..base.paths import resolve_path
from ..contract import MANIFEST_FILE
from ..contract.manifest import Manifest
from ..core.config import RetNetConfig
from ..errors import ArtifactError
from .options import STEP_GRAPH_CHOICES, RuntimeOptions, check_threads
from .registry import RUNTIMES
from .session_runner import Runner

__all__ = ["RUNTIMES", "Runner", "RuntimeOptions", "STEP_GRAPH_CHOICES", "check_threads", "load_runner"]


def check_config_matches(manifest: Manifest, cfg: RetNetConfig, path: Path) -> None:
    """The manifest's config must be the one the program carries (an edited manifest is not the artifact)."""
    if manifest.config != cfg:
        raise ArtifactError(f"{path}: the manifest's config differs from the one in the exported program "
                            "(the manifest was edited, or belongs to another artifact)")


def load_runner(path: str | Path, threads: int | None = None, verify_files: bool = True,
                step_graph: str = "auto", spin: bool = True, prompt_weights: str = "auto") -> Runner:
    """A runner for a model path (`demo`, checkpoint dir) or an exported artifact directory.

    An artifact's files are checked against the sha256 in its manifest first (a bit-flipped or swapped
    weights file would otherwise run and print different text); verify_files=False skips that (bench).
    `step_graph`, `spin` and `prompt_weights` are ONNX choices (`RuntimeOptions`)."""
    p = resolve_path(path)
    is_artifact = p.is_dir() and (p / MANIFEST_FILE).is_file()
    manifest = Manifest.load(p, check_hashes=verify_files) if is_artifact else None
    options = RuntimeOptions(threads=threads, step_graph=step_graph, spin=spin, prompt_weights=prompt_weights,
                             flavor=manifest.flavor if manifest else None)
    session = RUNTIMES.get(manifest.target if manifest else "eager")(p, options)
    if manifest is not None:
        check_config_matches(manifest, session.cfg, p)
    return Runner(session, p if p.is_dir() else None)
