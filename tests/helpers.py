"""Helpers shared by the tests: seeded tiny models with realistic weight scales (std 0.05)."""
from __future__ import annotations

import torch

from retnet_edge import RetNet, RetNetConfig


def make_model(seed: int = 0, std: float = 0.05, **overrides) -> RetNet:
    """A seeded tiny RetNet (eval mode); overrides go to RetNetConfig."""
    kwargs = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4, ffn_dim=96)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return RetNet(RetNetConfig(**kwargs)).init_weights(std).eval()
