"""onnxruntime runtime: model.onnx for decode, prefill.onnx (opened on first use) for prompts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import RetNetConfig
from ..contract import INPUT_IDS, ONNX_PREFILL_FILE, ONNX_STEP_FILE, POSITION_IDS, past_name
from ..errors import ArtifactError
from .registry import RUNTIMES


def session_options(threads: int | None = None):
    """The one onnxruntime configuration every session of ours uses (runner, baseline, profiler)."""
    import onnxruntime as ort  # here, not at the top: registering the runtime must not load the engine

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # polite on shared machines
    so.log_severity_level = 3
    return so


class OnnxSession:
    """Batched, functional access to an ONNX artifact (numpy in/out); the validator's candidate."""

    batch_sizes = (1, 3)

    def __init__(self, directory: Path, threads: int | None = None, prefill_chunk: int = 256):
        import onnxruntime as ort  # here, not at the top: registering the runtime must not load the engine

        self.directory, self.prefill_chunk = Path(directory), prefill_chunk
        so = session_options(threads)
        self._options, self._ort = so, ort
        self.step_session = self._open(ONNX_STEP_FILE)
        self._prefill = None
        meta = self.step_session.get_modelmeta().custom_metadata_map
        try:
            self.cfg = RetNetConfig.from_dict(json.loads(meta["retnet_edge.config"]))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{directory}/{ONNX_STEP_FILE} lacks retnet_edge.config metadata ({exc})") from exc
        self.metadata = dict(meta)
        self.past_names = [past_name(i) for i in range(self.cfg.n_layers)]

    def _open(self, name: str):
        path = self.directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} not found")
        try:
            return self._ort.InferenceSession(str(path), self._options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{path} could not be loaded by onnxruntime ({exc})") from exc

    @property
    def prefill_session(self):
        if self._prefill is None:
            self._prefill = self._open(ONNX_PREFILL_FILE)
        return self._prefill

    def init_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, *self.cfg.state_shape), np.float32) for _ in range(self.cfg.n_layers)]

    def _feed(self, ids, pos, state) -> dict:
        return {INPUT_IDS: ids, POSITION_IDS: pos, **dict(zip(self.past_names, state))}

    def run_step(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        logits, *state = self.step_session.run(None, self._feed(ids, pos, state))
        return logits, state

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray], last_only: bool = False):
        outs = []
        for c in range(0, ids.shape[1], self.prefill_chunk):
            sl = slice(c, c + self.prefill_chunk)
            logits, *state = self.prefill_session.run(None, self._feed(ids[:, sl], pos[:, sl], state))
            outs = [logits[:, -1:]] if last_only else [*outs, logits]
        return np.concatenate(outs, axis=1), state


@RUNTIMES.register("onnx")
def open_onnx(directory: Path, threads: int | None = None) -> OnnxSession:
    return OnnxSession(directory, threads)
