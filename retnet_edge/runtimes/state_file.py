"""Fixed-size states: in-memory snapshots (`State`) and files (safetensors: position + L state tensors).

A state is only meaningful to the weights that computed it, so every snapshot carries the fingerprint of
its artifact (`fingerprint_of`): a restore or a cache read refuses a state with another one. Snapshot
files (`write_snapshot`, the prefix cache's disk tier and chat's /save) are written atomically and carry a
sha256 over their metadata and tensor bytes; `read_snapshot` raises `StateFileError` on any mismatch.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, load_file, save, save_file

from ..base.io_utils import atomic_write_bytes
from ..contract import MANIFEST_FILE
from ..contract.manifest import sha256
from ..core.config import RetNetConfig
from ..errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # a checkpoint directory's weight files
SNAPSHOT_FORMAT = "retnet-edge-state/1"


class StateFileError(CheckpointError):
    """A snapshot file that is corrupt, truncated, or from another artifact."""


@dataclass(frozen=True)
class State:
    """A runner's recurrent state at `position` (per layer [1, H, d_k, d_v], read-only), and whose it is."""

    position: int
    tensors: tuple[np.ndarray, ...]
    fingerprint: str

    def __post_init__(self) -> None:
        for t in self.tensors:
            t.setflags(write=False)  # a cached state is restored many times: nobody may edit it in place

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def fingerprint_of(directory: Path | None, cfg: RetNetConfig) -> str:
    """sha256 naming the weights a state belongs to: an artifact's manifest file hashes (already checked by
    `load_runner`), a checkpoint directory's weight files, plus the config. Without a directory (a
    single-file checkpoint) only the config is known."""
    h = hashlib.sha256(cfg.to_json().encode())
    if directory is None:
        return h.hexdigest()
    directory = Path(directory)
    if (directory / MANIFEST_FILE).is_file():
        files = json.loads((directory / MANIFEST_FILE).read_text()).get("files", {})
        h.update(json.dumps({name: meta.get("sha256") for name, meta in files.items()}, sort_keys=True).encode())
    else:
        for p in sorted(directory.iterdir()):
            if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
                h.update(f"{p.name}:{sha256(p)}".encode())
    return h.hexdigest()


def save_state_file(path: str | Path, position: int, state: list[np.ndarray], config_json: str) -> None:
    tensors = {f"state.{i}": np.ascontiguousarray(s, dtype=np.float32) for i, s in enumerate(state)}
    tensors["position"] = np.array([position], dtype=np.int64)
    save_file(tensors, str(path), metadata={"config": config_json})


def load_state_file(path: str | Path, n_layers: int, shape: tuple[int, ...]) -> tuple[int, list[np.ndarray]]:
    try:
        data = load_file(str(path))
    except Exception as exc:  # SafetensorError / OSError
        raise CheckpointError(f"{path} is not a valid state file ({exc})") from exc
    state = [data.get(f"state.{i}") for i in range(n_layers)]
    if any(s is None or tuple(s.shape) != tuple(shape) for s in state) or "position" not in data:
        raise CheckpointError(f"{path}: state does not match this model (expected {n_layers} x {list(shape)})")
    return int(data["position"][0]), state


def _checksum(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def write_snapshot(path: str | Path, state: State, metadata: dict[str, str] | None = None,
                   extra: dict[str, np.ndarray] | None = None) -> None:
    """Write a snapshot atomically (temp file + rename) with its fingerprint and a checksum; `metadata`
    (strings) and `extra` tensors travel with it (the cache's next-token logits, chat's transcript)."""
    tensors = {f"state.{i}": np.ascontiguousarray(s, dtype=np.float32) for i, s in enumerate(state.tensors)}
    tensors["position"] = np.array([state.position], dtype=np.int64)
    tensors.update({f"extra.{k}": np.ascontiguousarray(v) for k, v in (extra or {}).items()})
    meta = {**(metadata or {}), "format": SNAPSHOT_FORMAT, "fingerprint": state.fingerprint}
    meta["checksum"] = _checksum(meta, tensors)
    atomic_write_bytes(Path(path), save(tensors, metadata=meta))


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors blob (safetensors.numpy.load returns the tensors only)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return header.get("__metadata__") or {}


def read_snapshot(path: str | Path, fingerprint: str, n_layers: int,
                  shape: tuple[int, ...]) -> tuple[State, dict[str, str], dict[str, np.ndarray]]:
    """A snapshot, its metadata and extra tensors; StateFileError if it is unreadable, fails its checksum,
    has another fingerprint, or does not have this model's shapes."""
    try:
        blob = Path(path).read_bytes()
        tensors, meta = load(blob), _header_metadata(blob)
    except Exception as exc:  # OSError, SafetensorError, struct/JSON errors on a damaged header
        raise StateFileError(f"{path} is not a readable state file ({type(exc).__name__})") from exc
    meta = dict(meta)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise StateFileError(f"{path} is not a retnet-edge snapshot")
    if meta.pop("checksum", None) != _checksum(meta, tensors):
        raise StateFileError(f"{path} fails its checksum (corrupt or edited)")
    if meta["fingerprint"] != fingerprint:
        raise StateFileError(f"{path} holds a state of another artifact or config")
    layers = [tensors.pop(f"state.{i}", None) for i in range(n_layers)]
    position = tensors.pop("position", None)
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    if (any(s is None or s.shape != tuple(shape) for s in layers) or position is None or position.shape != (1,)
            or len(extra) != len(tensors)):
        raise StateFileError(f"{path}: state does not match this model (expected {n_layers} x {list(shape)})")
    return State(int(position[0]), tuple(layers), fingerprint), meta, extra
