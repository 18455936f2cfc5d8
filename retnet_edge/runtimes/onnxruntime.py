"""onnxruntime runner: model.onnx for decode, prefill.onnx (loaded on first use) for prompts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import RetNetConfig
from ..errors import CheckpointError
from . import register_runtime
from .state_file import load_state_file, save_state_file

STEP_FILE, PREFILL_FILE = "model.onnx", "prefill.onnx"


class OnnxSession:
    """Batched, functional access to an ONNX artifact (numpy in/out); the validator's candidate."""

    def __init__(self, directory: Path, threads: int | None = None, prefill_chunk: int = 256):
        import onnxruntime as ort

        self.directory, self.prefill_chunk = Path(directory), prefill_chunk
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # polite on shared machines
        so.log_severity_level = 3
        self._options, self._ort = so, ort
        self.step_session = self._open(STEP_FILE)
        self._prefill = None
        meta = self.step_session.get_modelmeta().custom_metadata_map
        try:
            self.cfg = RetNetConfig.from_dict(json.loads(meta["retnet_edge.config"]))
        except (KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{directory}/{STEP_FILE} lacks retnet_edge.config metadata ({exc})") from None
        self.metadata = dict(meta)
        L = self.cfg.n_layers
        self.past_names = [f"past.{i}.recurrent" for i in range(L)]

    def _open(self, name: str):
        path = self.directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} not found")
        try:
            return self._ort.InferenceSession(str(path), self._options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path} could not be loaded by onnxruntime ({exc})") from None

    @property
    def prefill_session(self):
        if self._prefill is None:
            self._prefill = self._open(PREFILL_FILE)
        return self._prefill

    def init_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, *self.cfg.state_shape), np.float32) for _ in range(self.cfg.n_layers)]

    def _feed(self, ids, pos, state) -> dict:
        return {"input_ids": ids, "position_ids": pos, **dict(zip(self.past_names, state))}

    def run_step(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        logits, *state = self.step_session.run(None, self._feed(ids, pos, state))
        return logits, state

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        outs = []
        for c in range(0, ids.shape[1], self.prefill_chunk):
            sl = slice(c, c + self.prefill_chunk)
            logits, *state = self.prefill_session.run(None, self._feed(ids[:, sl], pos[:, sl], state))
            outs.append(logits)
        return np.concatenate(outs, axis=1), state


@register_runtime("onnx")
class OnnxRunner:
    """Batch-1 runner over an ONNX artifact; owns the recurrent state."""

    def __init__(self, directory: Path, threads: int | None = None):
        self.session = OnnxSession(directory, threads)
        self.cfg, self.tokenizer_dir = self.session.cfg, Path(directory)
        self.reset()

    def reset(self) -> None:
        self.position, self.state = 0, self.session.init_state(1)

    def prefill(self, ids: list[int]) -> np.ndarray:
        T = len(ids)
        pos = np.arange(self.position, self.position + T, dtype=np.int64)[None]
        logits, self.state = self.session.run_prefill(np.array([ids], dtype=np.int64), pos, self.state)
        self.position += T
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
