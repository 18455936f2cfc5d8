"""Fixed-size state files: a prompt cache in O(1) bytes (safetensors: position + L state tensors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import CheckpointError


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
