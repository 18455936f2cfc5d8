"""Eager PyTorch: the reference session every artifact is validated against, and its batch-1 runner.

The session runs the same step and chunk (prefill) modules the exporters trace, so eager, ONNX and
ExecuTorch runners differ only in the engine under `run_step` / `run_prefill`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..step import RetNetStep, to_prefill, to_recurrent
from . import register_runtime
from .session_runner import SessionRunner


class EagerSession:
    """Batched, functional numpy access to the eager step and prefill modules."""

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
    def run_prefill(self, ids, pos, state):
        st = [torch.from_numpy(s) for s in state]
        outs = []
        for c in range(0, ids.shape[1], self.chunk_size):
            sl = slice(c, c + self.chunk_size)
            logits, *st = self.prefill_module(torch.from_numpy(ids[:, sl]), torch.from_numpy(pos[:, sl]), *st)
            outs.append(logits.numpy())
        return np.concatenate(outs, axis=1), [s.numpy() for s in st]


@register_runtime("eager")
class EagerRunner(SessionRunner):
    """Batch-1 runner over a canonical model: chunked prefill, step-module decode."""

    def __init__(self, model, tokenizer_dir: Path | None = None, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        super().__init__(EagerSession(to_recurrent(model.eval())), tokenizer_dir)

    @classmethod
    def from_path(cls, path: Path, threads: int | None = None) -> "EagerRunner":
        from ..loader import load

        return cls(load(path), tokenizer_dir=path if path.is_dir() else None, threads=threads)
