"""Model paths: the `demo` alias and existence checks. Light (no torch), so runtimes can use it."""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

DEMO_DIR = Path(__file__).parents[1] / "assets" / "demo"


def resolve_path(path: str | Path) -> Path:
    """Map the alias `demo` to the bundled demo model and a Hub id (`org/name[@rev]`, not a local path) to
    its cached snapshot; check that the path exists."""
    if str(path) == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise CheckpointError("the bundled demo model is missing from this installation")
        return DEMO_DIR
    p = Path(path)
    if not p.exists():
        from .hub import (  # here: huggingface_hub only when a hub id is given
            is_hub_id,
            looks_like_hub_id,
            resolve_hub_id,
        )

        if isinstance(path, str) and is_hub_id(path):
            return resolve_hub_id(path)
        if isinstance(path, str) and looks_like_hub_id(path):
            raise CheckpointError(f"{path} does not exist, and it is not a valid Hugging Face Hub id",
                                  hint="org/name or org/name@revision: letters, digits, '_', '-', '.'; "
                                  "no '--' or '..'")
        raise CheckpointError(f"{p} does not exist")
    return p
