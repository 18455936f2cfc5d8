"""The gate's eager reference over a checkpoint read layer by layer (`streaming.StreamedStack`).

`EagerSession` runs the whole fp32 step module token by token; at 1.3B that is 5.3 GB resident, and the
rounded-weights yardstick (`fake_quant`) doubles it. The gate's tokens are known in advance
(teacher-forced), so the reference can run the other way round: every token through layer 0, then
every token through layer 1, … — the recurrence inside each layer runs step by step (a chunk of one
token, eq. 7 with C = 1, the same arithmetic as eq. 6), and only one layer is resident at a time.
The rounded reference rounds each tensor as it is read.
"""
from __future__ import annotations

import numpy as np
import torch

from ..checkpoints.streaming import ModelWeights, StreamedStack
from ..contract.quant import QuantPlan
from ..core.retention import ChunkCore
from .fake_quant import rounding_transforms


class StreamedReference:
    """`steps(ids)`: the teacher-forced step loop from a zero state -> (logits [B,T,V], final state per layer);
    `prompt(ids)`: the prompt path (chunks of 64) -> logits, for the gate's noise floor."""

    def __init__(self, weights: ModelWeights, plan: QuantPlan | None = None, prompt_chunk: int = 64):
        outer, layer = rounding_transforms(plan) if plan is not None else (None, None)
        self.stack = StreamedStack(weights, outer, layer)
        self.cfg, self.prompt_chunk = weights.cfg, prompt_chunk

    @torch.no_grad()
    def _run(self, ids: np.ndarray, chunk: int) -> tuple[np.ndarray, list[np.ndarray]]:
        x = torch.from_numpy(ids)
        positions = torch.arange(x.shape[1])
        core = ChunkCore(self.stack.log_gamma, positions, self.cfg.normalize, chunk_size=chunk)
        logits, state = self.stack.run(x, positions, core, self.stack.init_state(x.shape[0]))
        return logits.numpy(), [s.numpy() for s in state]

    def steps(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._run(ids, 1)

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids, self.prompt_chunk)[0]

    def states_at(self, ids: np.ndarray, positions: list[int]) -> dict[int, list[np.ndarray]]:
        """{p: the state per layer after ids[:, :p]} — one layer-streamed pass per position."""
        return {p: self._run(ids[:, :p], 1)[1] for p in sorted(set(positions))}
