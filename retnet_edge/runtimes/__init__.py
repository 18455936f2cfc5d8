"""Runners: one interface over eager PyTorch and every exported artifact.

`load_runner(path)` opens the runtime an artifact's manifest names (`target`), or the eager runtime for
a model checkpoint, and wraps its session in a `Runner` (reset, prefill, step, save_state, load_state).
"""
from __future__ import annotations

from pathlib import Path

from ..config import RetNetConfig
from ..contract import MANIFEST_FILE
from ..errors import ArtifactError, ConfigError
from ..io_utils import read_json
from ..manifest import read_manifest
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


MAX_THREADS = 256


def check_threads(threads: int | None) -> None:
    """None (the runtime's default) or 1..MAX_THREADS: -1 aborted the ExecuTorch runtime and 100000 grew
    onnxruntime past 2.5 GB before crashing (issue 14)."""
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"--threads must be between 1 and {MAX_THREADS}, got {threads!r}")


def check_config_matches(manifest: dict, cfg: RetNetConfig, path: Path) -> None:
    """The manifest's config must be the one the program carries (an edited manifest is not the artifact)."""
    if RetNetConfig.from_dict(manifest["config"]) != cfg:
        raise ArtifactError(f"{path}: the manifest's config differs from the one in the exported program "
                            "(the manifest was edited, or belongs to another artifact)")


def load_runner(path: str | Path, threads: int | None = None, verify_files: bool = True) -> Runner:
    """A runner for a model path (`demo`, checkpoint dir) or an exported artifact directory.

    An artifact's files are checked against the sha256 in its manifest first (a bit-flipped or swapped
    weights file would otherwise run and print different text); verify_files=False skips that (bench)."""
    check_threads(threads)
    p = resolve_path(path)
    is_artifact = p.is_dir() and (p / MANIFEST_FILE).is_file()
    manifest = read_manifest(p, check_hashes=verify_files) if is_artifact else None
    session = RUNTIMES.get(manifest["target"] if manifest else "eager")(p, threads)
    if manifest is not None:
        check_config_matches(manifest, session.cfg, p)
    return Runner(session, p if p.is_dir() else None)
