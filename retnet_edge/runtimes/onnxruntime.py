"""onnxruntime runner: model.onnx for decode, prefill.onnx (loaded on first use) for prompts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import RetNetConfig
from ..errors import CheckpointError
from . import register_runtime
from .session_runner import SessionRunner

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
class OnnxRunner(SessionRunner):
    """Batch-1 runner over an ONNX artifact; owns the recurrent state."""

    def __init__(self, directory: Path, threads: int | None = None):
        super().__init__(OnnxSession(directory, threads), directory)
