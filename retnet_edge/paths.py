"""Model paths: the `demo` alias and existence checks. Light (no torch), so runtimes can use it."""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

DEMO_DIR = Path(__file__).parent / "assets" / "demo"


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
