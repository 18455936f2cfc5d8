"""Eager PyTorch: the reference session every artifact is validated against, and the runtime of checkpoints.

The session runs the same step and chunk (prefill) modules the exporters trace, so eager, ONNX and
ExecuTorch runners differ only in the engine under `run_step` / `run_prefill`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoints.loader import load
from ..contract import SessionDefaults
from ..core.step import RetNetStep, to_prefill, to_recurrent
from .options import RuntimeOptions


class EagerSession(SessionDefaults):
    """Batched, functional numpy access to the eager step and prefill modules."""

    batch_sizes = (1, 3)

    def __init__(self, step: RetNetStep, chunk_size: int = 64):
        self.step_module, self.prefill_module, self.chunk_size = step, to_prefill(step), chunk_size
        self.cfg = step.cfg

    def init_state(self, batch_size: int) -> list[np.ndarray]:
        return [s.numpy() for s in self.step_module.init_state(batch_size)]

    @torch.no_grad()
    def run_step(self, ids, pos, state):
        logits, *state = self.step_module(torch.from_numpy(ids), torch.from_numpy(pos),
                                          *[torch.from_numpy(s) for s in state])
        return logits.numpy(), [s.numpy() for s in state]

    @torch.no_grad()
    def run_prefill(self, ids, pos, state, last_only: bool = False):
        states = [torch.from_numpy(s) for s in state]
        outs = []
        for c in range(0, ids.shape[1], self.chunk_size):
            sl = slice(c, c + self.chunk_size)
            logits, *states = self.prefill_module(torch.from_numpy(ids[:, sl]), torch.from_numpy(pos[:, sl]), *states)
            outs = [logits[:, -1:].numpy()] if last_only else [*outs, logits.numpy()]
        return np.concatenate(outs, axis=1), [s.numpy() for s in states]


def open_eager(path: Path, options: RuntimeOptions) -> EagerSession:
    """A checkpoint (any supported format) through its eager step and prefill modules."""
    if options.threads:
        torch.set_num_threads(options.threads)
    return EagerSession(to_recurrent(load(path)))
