"""`Runner`: batch-1 decoding with an owned recurrent state, over any StepSession (eager, ONNX, ExecuTorch).

The session is stateless (state in, state out); the runner owns the state and the position. A session
whose program keeps the state inside itself (the ExecuTorch runner flavour) says so with
`state_in_program`, and then cannot save or load states.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RetNetConfig
from ..contract import StepSession
from ..errors import ArtifactError
from .state_file import load_state_file, save_state_file


class Runner:
    """reset / prefill / step / save_state / load_state over a session's run_prefill and run_step."""

    def __init__(self, session: StepSession, tokenizer_dir: Path | None):
        self.session = session
        self.cfg: RetNetConfig = session.cfg
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.reset()

    def reset(self) -> None:
        self.position, self.state = 0, self.session.init_state(1)

    def prefill(self, ids: list[int], all_logits: bool = True) -> np.ndarray:
        """Consume ids from the current position; logits for every one of them [T, V] (or the last [1, V])."""
        pos = np.arange(self.position, self.position + len(ids), dtype=np.int64)[None]
        logits, self.state = self.session.run_prefill(np.array([ids], dtype=np.int64), pos, self.state,
                                                      last_only=not all_logits)
        self.position += len(ids)
        return logits[0]

    def step(self, token: int) -> np.ndarray:
        """Consume one token; logits [V] for the next."""
        logits, self.state = self.session.run_step(np.array([[token]], dtype=np.int64),
                                                   np.array([[self.position]], dtype=np.int64), self.state)
        self.position += 1
        return logits[0, -1]

    def _check_state_io(self) -> None:
        if getattr(self.session, "state_in_program", False):
            raise ArtifactError("this program keeps its state inside itself (ExecuTorch runner flavour); "
                                "export --flavor io to save and load states")

    def save_state(self, path: str | Path) -> None:
        self._check_state_io()
        save_state_file(path, self.position, self.state, self.cfg.to_json())

    def load_state(self, path: str | Path) -> None:
        self._check_state_io()
        self.position, self.state = load_state_file(path, self.cfg.n_layers, (1, *self.cfg.state_shape))
