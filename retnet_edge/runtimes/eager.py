"""The eager PyTorch runner: chunkwise prefill, step-module decode. The reference every artifact meets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model import RetNet
from ..step import to_recurrent
from . import register_runtime
from .state_file import load_state_file, save_state_file


@register_runtime("eager")
class EagerRunner:
    """Batch-1 runner over a canonical RetNet."""

    def __init__(self, model: RetNet, tokenizer_dir: Path | None = None, threads: int | None = None,
                 chunk_size: int = 64):
        if threads:
            torch.set_num_threads(threads)
        self.model, self.cfg, self.tokenizer_dir, self.chunk_size = model.eval(), model.cfg, tokenizer_dir, chunk_size
        self.step_module = to_recurrent(model)
        self.reset()

    @classmethod
    def from_path(cls, path: Path, threads: int | None = None) -> "EagerRunner":
        from ..loader import load

        return cls(load(path), tokenizer_dir=path if path.is_dir() else None, threads=threads)

    def reset(self) -> None:
        self.position = 0
        self.state = list(self.step_module.init_state(1))

    @torch.no_grad()
    def prefill(self, ids: list[int]) -> np.ndarray:
        x = torch.tensor([ids], dtype=torch.long)
        logits, self.state = self.model.forward_chunkwise(x, self.chunk_size, state=self.state,
                                                          start_pos=self.position, return_state=True)
        self.position += len(ids)
        return logits[0].numpy()

    @torch.no_grad()
    def step(self, token: int) -> np.ndarray:
        logits, *self.state = self.step_module(torch.tensor([[token]]), torch.tensor([[self.position]]), *self.state)
        self.position += 1
        return logits[0, -1].numpy()

    def save_state(self, path: str | Path) -> None:
        save_state_file(path, self.position, [s.numpy() for s in self.state], self.cfg.to_json())

    def load_state(self, path: str | Path) -> None:
        self.position, state = load_state_file(path, self.cfg.n_layers, (1, *self.cfg.state_shape))
        self.state = [torch.from_numpy(s) for s in state]


class EagerSession:
    """Batched, functional numpy access to the eager step and prefill modules (the validation reference)."""

    def __init__(self, step, chunk_size: int = 64):
        from ..step import to_prefill

        self.step_module, self.prefill_module, self.chunk_size = step, to_prefill(step), chunk_size

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
