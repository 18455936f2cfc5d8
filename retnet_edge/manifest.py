"""manifest.json: what an artifact holds (files + sha256), how it was made, and how it validated."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .contract import MANIFEST_FILE as MANIFEST
from .errors import ArtifactError
from .io_utils import read_json


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, info: dict) -> dict:
    """Hash every file in the directory and write manifest.json beside them."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"tool": "retnet-edge", "version": __version__, **info, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(directory: Path, check_hashes: bool = True) -> dict:
    """Read manifest.json; with check_hashes, every listed file must exist with its recorded sha256."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an exported artifact (no {MANIFEST})")
    manifest = read_json(path)
    if check_hashes:
        for name, meta in manifest.get("files", {}).items():
            f = Path(directory) / name
            if not f.is_file():
                raise ArtifactError(f"{directory}: {name} listed in the manifest is missing")
            if sha256(f) != meta["sha256"]:
                raise ArtifactError(f"{directory}: {name} does not match its manifest sha256 (modified or corrupt)")
    return manifest
