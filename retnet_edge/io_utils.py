"""Safe file helpers: atomic directory writes, JSON reads, safetensors writes (reads: checkpoints/tensors.py)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import CheckpointError, RetNetEdgeError

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename, on error it vanishes."""
    out = Path(path)
    if out.exists() and not force:
        raise RetNetEdgeError(f"{out} already exists", hint="pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temp file beside it and one rename: readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    """Parse a JSON object file or raise CheckpointError naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write contiguous, unshared tensors (tied weights are written once by the caller)."""
    from safetensors.torch import save_file  # here: the runtime-only install has no torch

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
