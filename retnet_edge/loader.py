"""`load(path)`: the one entry point from a path (or the name `demo`) to a canonical RetNet.

Formats register here as small entries (detect, read config, load); later converters add theirs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import RetNetConfig
from .errors import CheckpointError

DEMO_DIR = Path(__file__).parent / "assets" / "demo"


@dataclass(frozen=True)
class Format:
    """A checkpoint format: how to recognise it, read its config alone, and load the model."""

    name: str
    detect: Callable[[Path], bool]
    read_config: Callable[[Path], RetNetConfig]
    load: Callable[[Path], "object"]
    check_weights: Callable[[Path, RetNetConfig], dict]  # header-only validation: {file_bytes, dtypes}


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def resolve_path(path: str | Path) -> Path:
    """Map the alias `demo` to the bundled demo model; check that the path exists."""
    if str(path) == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise CheckpointError("the bundled demo model is missing from this installation")
        return DEMO_DIR
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    return p


def detect_format(path: Path) -> Format:
    """The first registered format that recognises path, else a CheckpointError naming what was found."""
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    found = sorted(x.name for x in path.iterdir())[:12] if path.is_dir() else [path.name]
    raise CheckpointError(
        f"{path}: unrecognised checkpoint format (found: {', '.join(found) or 'an empty directory'}); "
        f"known formats: {', '.join(FORMATS)}")


def get_format(path: Path, format: str = "auto") -> Format:
    if format == "auto":
        return detect_format(path)
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    return FORMATS[format]


def load(path: str | Path, format: str = "auto"):
    """Load any supported checkpoint into a canonical, eval-mode fp32 RetNet."""
    p = resolve_path(path)
    return get_format(p, format).load(p)


def load_config(path: str | Path, format: str = "auto") -> tuple[str, RetNetConfig]:
    """(format name, config) without reading weights."""
    p = resolve_path(path)
    fmt = get_format(p, format)
    return fmt.name, fmt.read_config(p)


def check_weights(path: str | Path, format: str = "auto") -> tuple[str, RetNetConfig, dict]:
    """(format name, config, weight-file facts) after validating names/shapes/dtypes from headers only."""
    p = resolve_path(path)
    fmt = get_format(p, format)
    cfg = fmt.read_config(p)
    return fmt.name, cfg, fmt.check_weights(p, cfg)


def _register_builtin() -> None:
    from . import native

    register_format(Format("native", native.is_native, native.read_native_config, native.load_native,
                           native.check_native_weights))


_register_builtin()
from . import checkpoints  # noqa: E402,F401  (registers the foreign formats)
