"""ExecuTorch runner over a .pte from `retnet-edge export --target executorch` (both flavours)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import RetNetConfig
from ..errors import CheckpointError
from . import register_runtime
from .session_runner import SessionRunner


class ExecuTorchSession:
    """Functional numpy access for the validator. The runner flavour is stateful and batch 1: its state
    lives in the program, so the `state` it hands back is an opaque placeholder."""

    def __init__(self, directory: Path, threads: int | None = None):
        import executorch.kernels.quantized  # noqa: F401  (out-variants of quantized embedding ops)
        from executorch.runtime import Runtime

        self.directory = Path(directory)
        from ..io_utils import read_json

        meta = read_json(self.directory / "delegation.json")
        self.flavor = meta["flavor"]
        self.cfg = RetNetConfig.from_dict(meta["config"])
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        path = self.directory / "model.pte"
        if not path.is_file():
            raise CheckpointError(f"{path} not found")
        try:
            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError with its own codes
            raise CheckpointError(f"{path} could not be loaded by ExecuTorch ({exc})") from None
        self.batch_sizes = (1,)

    def init_state(self, batch_size: int) -> list[np.ndarray]:
        if self.flavor == "runner":
            return []
        return [np.zeros((batch_size, *self.cfg.state_shape), np.float32) for _ in range(self.cfg.n_layers)]

    def run_step(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        if self.flavor == "runner":
            (logits,) = self.method.execute([torch.from_numpy(ids), torch.from_numpy(pos.reshape(1))])
            return logits.numpy().copy(), state
        logits, *present = self.method.execute([torch.from_numpy(ids), torch.from_numpy(pos),
                                                *[torch.from_numpy(s) for s in state]])
        return logits.numpy().copy(), [p.numpy().copy() for p in present]

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        """Token by token: the stock runner's own prefill with enable_dynamic_shape=False."""
        outs = []
        for t in range(ids.shape[1]):
            logits, state = self.run_step(ids[:, t : t + 1], pos[:, t : t + 1], state)
            outs.append(logits)
        return np.concatenate(outs, axis=1), state

    def refuse_state_io(self) -> None:
        raise CheckpointError("the runner-flavour .pte keeps its state inside the program; export --flavor io "
                              "to save and load states")


@register_runtime("executorch")
class ExecuTorchRunner(SessionRunner):
    """Batch-1 runner with the same interface as the ONNX runner."""

    def __init__(self, directory: Path, threads: int | None = None):
        super().__init__(ExecuTorchSession(directory, threads), directory)

    def save_state(self, path) -> None:
        if self.session.flavor == "runner":
            self.session.refuse_state_io()
        super().save_state(path)

    def load_state(self, path) -> None:
        if self.session.flavor == "runner":
            self.session.refuse_state_io()
        super().load_state(path)
