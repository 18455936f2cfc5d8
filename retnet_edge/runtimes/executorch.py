"""ExecuTorch runtime over a .pte from `retnet-edge export --target executorch` (both flavours)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..base.io_utils import read_json
from ..contract import DELEGATION_FILE, PTE_FILE, SessionDefaults
from ..core.config import RetNetConfig
from ..errors import ArtifactError, RetNetEdgeError
from .options import RuntimeOptions

NATIVE_NOISE = ("cpuinfo_utils.cpp",)  # ExecuTorch's CPU probing, printed on every load on x86 and VMs


@contextlib.contextmanager
def native_log_filtered(noise: tuple[str, ...] = NATIVE_NOISE):
    """Capture fd 2 (native code writes there, not to sys.stderr) while the runtime starts; pass through
    every line but the known noise, so real errors still reach the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in noise):
                    sys.stderr.write(line)


class ExecuTorchSession(SessionDefaults):
    """Functional numpy access for the validator. The runner flavour is stateful and batch 1: its state
    lives in the program, so the `state` it hands back is an opaque placeholder."""

    batch_sizes = (1,)

    def __init__(self, directory: Path, threads: int | None = None):
        # here, not at the top: registering the runtime must not load the engine
        import executorch.kernels.quantized  # noqa: F401  (out-variants of quantized embedding ops)
        from executorch.runtime import Runtime

        self.directory = Path(directory)
        meta = read_json(self.directory / DELEGATION_FILE)
        if meta.get("flavor") not in ("runner", "io") or not isinstance(meta.get("config"), dict):
            raise ArtifactError(f"{self.directory / DELEGATION_FILE} needs a flavor (runner or io) and a config")
        self.flavor = meta["flavor"]
        self.state_in_program = self.flavor == "runner"
        try:
            self.cfg = RetNetConfig.from_dict(meta["config"])
        except RetNetEdgeError as exc:
            raise ArtifactError(f"{self.directory / DELEGATION_FILE}: invalid config ({exc})") from exc
        with native_log_filtered():
            if threads:
                from executorch.extension.pybindings.portable_lib import (
                    _unsafe_reset_threadpool,  # (engine: see above)
                )

                _unsafe_reset_threadpool(threads)
                # the program's non-delegated kernels run in torch's OpenMP pool: at its default (all
                # cores) its workers spin-wait, and on a busy 2-core machine a demo step took 42 ms of CPU, not 4
                torch.set_num_threads(threads)
            path = self.directory / PTE_FILE
            if not path.is_file():
                raise ArtifactError(f"{path} not found")
            try:
                self.program = Runtime.get().load_program(str(path))
                self.method = self.program.load_method("forward")
            except Exception as exc:  # the runtime raises RuntimeError with its own codes
                raise ArtifactError(f"{path} could not be loaded by ExecuTorch ({exc})") from exc

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

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray], last_only: bool = False):
        """Token by token: the stock runner's own prefill with enable_dynamic_shape=False."""
        outs = []
        for t in range(ids.shape[1]):
            logits, state = self.run_step(ids[:, t : t + 1], pos[:, t : t + 1], state)
            outs = [logits] if last_only else [*outs, logits]
        return np.concatenate(outs, axis=1), state


def open_executorch(directory: Path, options: RuntimeOptions) -> ExecuTorchSession:
    return ExecuTorchSession(directory, options.threads)
