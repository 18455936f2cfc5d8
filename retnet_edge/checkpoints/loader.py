"""`load(path) -> RetNet`: the one entry point from a path (or the name `demo`) to a canonical RetNet.

Formats are `checkpoints.FORMATS` entries; everything here is generic over `Format.tensors`.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..base.io_utils import read_json
from ..base.paths import DEMO_DIR, resolve_path  # noqa: F401  (re-exported: the loader's public names)
from ..core.config import RetNetConfig
from ..core.model import RetNet
from ..errors import CheckpointError
from . import FORMATS, Format
from .native import build_model
from .tensors import checkpoint_file


def detect_format(path: Path) -> Format:
    """The first registered format that recognises path, else a CheckpointError naming what was found."""
    if path.is_dir() and os.path.lexists(path / "config.json"):
        # an unparsable, special or escaping config is that, not an "unrecognised format"
        read_json(checkpoint_file(path, "config.json", "config"))
    for _, fmt in FORMATS.items():
        if fmt.detect(path):
            return fmt
    found = sorted(x.name for x in path.iterdir())[:12] if path.is_dir() else [path.name]
    raise CheckpointError(
        f"{path}: unrecognised checkpoint format (found: {', '.join(found) or 'an empty directory'}); "
        f"known formats: {', '.join(FORMATS)}")


def get_format(path: Path, format: str = "auto") -> Format:
    return detect_format(path) if format == "auto" else FORMATS.get(format)


def load(path: str | Path, format: str = "auto") -> RetNet:
    """Load any supported checkpoint into a canonical, eval-mode fp32 RetNet."""
    p = resolve_path(path)
    fmt = get_format(p, format)
    cfg = fmt.read_config(p)
    cfg.check_fits_in_memory(f"{p}")
    return build_model(cfg, {k: t.read() for k, t in fmt.tensors(p, cfg).items()})


def load_config(path: str | Path, format: str = "auto") -> tuple[str, RetNetConfig]:
    """(format name, config) without reading weights."""
    p = resolve_path(path)
    fmt = get_format(p, format)
    return fmt.name, fmt.read_config(p)


def check_weights(path: str | Path, format: str = "auto") -> tuple[str, RetNetConfig, dict]:
    """(format name, config, {file_bytes, dtypes}) after validating names/shapes/dtypes from headers only."""
    p = resolve_path(path)
    fmt = get_format(p, format)
    cfg = fmt.read_config(p)
    tensors = fmt.tensors(p, cfg)
    return fmt.name, cfg, {"file_bytes": sum(_regular_size(f) for f in fmt.weight_files(p)),
                           "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})}


def _regular_size(path: Path) -> int:
    """A weight file's size for `inspect` (0 for what is not a readable regular file: a dangling link, a FIFO)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
