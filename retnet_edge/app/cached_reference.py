"""The fp32 reference runner with each window's logits kept, so several artifacts are scored against it on
the same windows (`runtimes.scoring.compare_text`) while fp32 runs each window once: the bundle's quality
pass and benchmarks/int4_methods.py."""
from __future__ import annotations

import numpy as np

from ..runtimes import Runner


class CachedReference:
    """Quacks like the `Runner` calls compare_text makes (`cfg`, `reset`, `prefill`); memory: the logits of
    the scored tokens (4096 tokens x 4096 vocab: 64 MiB)."""

    def __init__(self, runner: Runner):
        self.runner, self.cfg = runner, runner.cfg
        self.cache: dict[tuple[int, ...], np.ndarray] = {}

    def reset(self) -> None:
        """Each prefill starts from a fresh state already."""

    def prefill(self, ids: list[int]) -> np.ndarray:
        key = tuple(ids)
        if key not in self.cache:
            self.runner.reset()
            self.cache[key] = self.runner.prefill(ids)
        return self.cache[key]
