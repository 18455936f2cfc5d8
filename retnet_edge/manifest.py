"""manifest.json: what an artifact holds (files + sha256), how it was made, and how it validated."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .contract import MANIFEST_FILE as MANIFEST
from .config import RetNetConfig
from .errors import ArtifactError, RetNetEdgeError
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


HEX = set("0123456789abcdef")


def check_manifest(manifest: dict, path: Path) -> None:
    """Types and names before anything is used (issue 14: a bad field raised KeyError/TypeError, and a file
    entry like `../../bigfile` made `inspect` hash a file outside the artifact)."""
    def bad(why: str) -> ArtifactError:
        return ArtifactError(f"{path}: {why}")

    if not isinstance(manifest.get("target"), str):
        raise bad("no \"target\" string")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("no \"files\" table")
    for name, meta in files.items():
        if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
            raise bad(f"file entry {str(name)[:80]!r} is not a plain file name in the artifact")
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("sha256"), str)
                and len(meta["sha256"]) == 64 and set(meta["sha256"]) <= HEX):
            raise bad(f"file entry {name!r} needs integer bytes and a sha256 hex digest")
    if not isinstance(manifest.get("config"), dict):
        raise bad("no \"config\" object")
    try:
        RetNetConfig.from_dict(manifest["config"])
    except RetNetEdgeError as exc:
        raise bad(f"its config is invalid ({exc})") from exc
    quant = manifest.get("quant")
    if not (isinstance(quant, dict) and isinstance(quant.get("scheme"), str)):
        raise bad("no \"quant\" object with a scheme")


def read_manifest(directory: Path, check_hashes: bool = True) -> dict:
    """Read manifest.json; with check_hashes, every listed file must exist with its recorded sha256."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an exported artifact (no {MANIFEST})")
    try:
        manifest = read_json(path)
    except RetNetEdgeError as exc:
        raise ArtifactError(str(exc)) from exc
    check_manifest(manifest, path)
    if check_hashes:
        for name, meta in manifest["files"].items():
            f = Path(directory) / name
            if not f.is_file():
                raise ArtifactError(f"{directory}: {name} listed in the manifest is missing")
            if sha256(f) != meta["sha256"]:
                raise ArtifactError(f"{directory}: {name} does not match its manifest sha256 (modified or corrupt)")
    return manifest
