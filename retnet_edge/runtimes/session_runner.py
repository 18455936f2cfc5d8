"""`Runner`: batch-1 decoding with an owned recurrent state, over any StepSession (eager, ONNX, ExecuTorch).

The session is stateless (state in, state out); the runner owns the state and the position. Because the
state is a fixed-size summary of everything read, a runner can `snapshot()` it, `restore()` it later
(the prefix cache, chat's /undo) and `fork()` a second runner over the same session (the weights loaded
once). A session whose program keeps the state inside itself (the ExecuTorch runner flavour) says so with
`state_in_program`, and then cannot save, load, snapshot or fork states.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import StepSession
from ..core.config import RetNetConfig
from ..errors import ArtifactError
from .state_file import State, fingerprint_of, load_state_file, save_state_file


class StateDecoder:
    """The generic decoder over a functional session: the state is a list of numpy arrays, passed in and out."""

    def __init__(self, session: StepSession):
        self.session = session
        self.state: list[np.ndarray] = []

    def reset(self) -> None:
        self.state = self.session.init_state(1)

    def step(self, token: int, position: int) -> np.ndarray:
        logits, self.state = self.session.run_step(np.array([[token]], dtype=np.int64),
                                                   np.array([[position]], dtype=np.int64), self.state)
        return logits[0, -1]

    def prefill(self, ids: np.ndarray, pos: np.ndarray, last_only: bool) -> np.ndarray:
        logits, self.state = self.session.run_prefill(ids, pos, self.state, last_only=last_only)
        return logits

    def get_state(self) -> list[np.ndarray]:
        return [np.array(s, copy=True) for s in self.state]

    def set_state(self, state: list[np.ndarray]) -> None:
        self.state = [np.array(s, dtype=np.float32, copy=True) for s in state]


class Runner:
    """reset / prefill / step / save_state / load_state over a session's decoder.

    A session that can keep the state in place (ONNX: `decoder()` with IOBinding) supplies its own
    decoder; any other session is driven functionally by `StateDecoder`.
    """

    def __init__(self, session: StepSession, tokenizer_dir: Path | None, fingerprint: str | None = None):
        self.session = session
        self.cfg: RetNetConfig = session.cfg
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self._fingerprint = fingerprint  # see `fingerprint`; a fork inherits its parent's
        self.decoder = session.decoder() or StateDecoder(session)
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.decoder.reset()

    @property
    def state(self) -> list[np.ndarray]:
        """A copy of the recurrent state, per layer [1, H, d_k, d_v] (empty when the program keeps it)."""
        return self.decoder.get_state()

    @state.setter
    def state(self, state: list[np.ndarray]) -> None:
        self.decoder.set_state(state)

    def prefill(self, ids: list[int], all_logits: bool = True) -> np.ndarray:
        """Consume ids from the current position; logits for every one of them [T, V] (or the last [1, V])."""
        pos = np.arange(self.position, self.position + len(ids), dtype=np.int64)[None]
        logits = self.decoder.prefill(np.array([ids], dtype=np.int64), pos, last_only=not all_logits)
        self.position += len(ids)
        return logits[0]

    def step(self, token: int) -> np.ndarray:
        """Consume one token; logits [V] for the next."""
        logits = self.decoder.step(token, self.position)
        self.position += 1
        return logits

    def open_prompt(self, tokens: int | None = None) -> None:
        """Open the prompt graph now (`StepSession.open_prompt`: tokens is the length of the one prompt to
        come when the caller frees the graph after it, None when the graph serves many prompts)."""
        self.session.open_prompt(tokens)

    def release_prefill(self) -> None:
        """Free the prompt graph until the next prefill, where the session can (ONNX): decode-phase memory
        is then one copy of the weights plus the state."""
        self.session.drop_prefill()

    def _check_state_io(self) -> None:
        if self.session.state_in_program:
            raise ArtifactError("this program keeps its state inside itself (ExecuTorch runner flavour); "
                                "export --flavor io to save and load states")

    @property
    def fingerprint(self) -> str:
        """sha256 of the artifact (manifest hashes) or checkpoint (weight files) and config: whose states fit.
        Computed on first use (a checkpoint's weights are hashed once)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.tokenizer_dir, self.cfg)
        return self._fingerprint

    def snapshot(self) -> State:
        """An in-memory copy of the state, its position and this artifact's fingerprint."""
        self._check_state_io()
        return State(self.position, tuple(self.decoder.get_state()), self.fingerprint)

    def restore(self, state: State) -> None:
        """Continue from a snapshot: O(state bytes), whatever the number of tokens it summarises."""
        self._check_state_io()
        if state.fingerprint != self.fingerprint:
            raise ArtifactError(f"this state belongs to another artifact or config (fingerprint "
                                f"{state.fingerprint[:12]}, this runner's {self.fingerprint[:12]})")
        shape = (1, *self.cfg.state_shape)
        if len(state.tensors) != self.cfg.n_layers or any(t.shape != shape for t in state.tensors):
            raise ArtifactError(f"this state does not have this model's shape ({self.cfg.n_layers} x {list(shape)})")
        self.decoder.set_state(list(state.tensors))
        self.position = state.position

    def fork(self) -> Runner:
        """A second runner over the same session (no second copy of the weights) with its own copy of this
        runner's state and position."""
        self._check_state_io()
        twin = Runner(self.session, self.tokenizer_dir, fingerprint=self.fingerprint)
        twin.restore(self.snapshot())
        return twin

    def save_state(self, path: str | Path) -> None:
        self._check_state_io()
        save_state_file(path, self.position, self.state, self.cfg.to_json())

    def load_state(self, path: str | Path) -> None:
        self._check_state_io()
        self.position, self.state = load_state_file(path, self.cfg.n_layers, (1, *self.cfg.state_shape))
