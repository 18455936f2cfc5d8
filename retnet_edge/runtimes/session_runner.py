"""`SessionRunner`: the batch-1 Runner over any functional StepSession (eager, ONNX, ExecuTorch).

The session is stateless (state in, state out); the runner owns the state and the position.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .state_file import load_state_file, save_state_file


class SessionRunner:
    """reset / prefill / step / save_state / load_state over a session's run_prefill and run_step."""

    def __init__(self, session, directory: Path | None):
        self.session = session
        self.cfg, self.tokenizer_dir = session.cfg, Path(directory) if directory is not None else None
        self.reset()

    def reset(self) -> None:
        self.position, self.state = 0, self.session.init_state(1)

    def prefill(self, ids: list[int]) -> np.ndarray:
        pos = np.arange(self.position, self.position + len(ids), dtype=np.int64)[None]
        logits, self.state = self.session.run_prefill(np.array([ids], dtype=np.int64), pos, self.state)
        self.position += len(ids)
        return logits[0]

    def step(self, token: int) -> np.ndarray:
        logits, self.state = self.session.run_step(np.array([[token]], dtype=np.int64),
                                                   np.array([[self.position]], dtype=np.int64), self.state)
        self.position += 1
        return logits[0, -1]

    def save_state(self, path) -> None:
        save_state_file(path, self.position, self.state, self.cfg.to_json())

    def load_state(self, path) -> None:
        self.position, self.state = load_state_file(path, self.cfg.n_layers, (1, *self.cfg.state_shape))
