"""Small tensor functions shared by the three forms and the step module.

Every norm is written as a mean over the last two dims of a 4-D view: XNNPACK lowers `mean` only in
that shape, and the result is bit-identical to a 1-D RMSNorm.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import RetNetConfig


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm over the last dim of x [..., D], computed in fp32 through a 4-D mean."""
    shape = x.shape
    x4 = x.float().reshape(-1, 1, shape[-1], 1)  # [N, 1, D, 1]
    ms = (x4 * x4).mean(dim=(-2, -1), keepdim=True)  # [N, 1, 1, 1]
    y = (x4 * torch.rsqrt(ms + eps)).reshape(shape).to(x.dtype)
    return y * weight if weight is not None else y


class RMSNorm(nn.Module):
    """RMSNorm with an optional weight (no bias, as in post-Sep-2023 torchscale and fla)."""

    def __init__(self, dim: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def log_decay(cfg: RetNetConfig) -> Tensor:
    """log γ_h per head [H], fp32 (bf16 would round the slow heads' γ to exactly 1)."""
    H = cfg.n_heads
    if cfg.decay == "retnet":
        gamma = 1.0 - torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float64))
    else:  # "lm": syncdoth's use_lm_decay
        gamma = 1.0 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), H, dtype=torch.float64))
    return torch.log(gamma).float()


def rotary_freqs(cfg: RetNetConfig) -> Tensor:
    """Angular frequency per rotated pair [d_k/2] for the config's rotary variant."""
    half = cfg.head_dim_k // 2
    if cfg.rotary == "torchscale":  # 1/θ^linspace(0, 1, d_k/2)
        exponent = torch.linspace(0, 1, half, dtype=torch.float64)
    else:  # fla / NeoX: 1/θ^(2i/d_k)
        exponent = torch.arange(0, cfg.head_dim_k, 2, dtype=torch.float64) / cfg.head_dim_k
    return (1.0 / cfg.rope_theta**exponent).float()


def rotary_cos_sin(positions: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin [..., 1, d_k/2] for integer positions [...] (the 1 broadcasts over heads); constant work per position.

    A reshape, not unsqueeze: XNNPACK lowers the view, while an unsqueeze here split the step into two partitions.
    """
    angle = positions.float().reshape(*positions.shape, 1, 1) * freqs  # [..., 1, d_k/2]
    return torch.cos(angle), torch.sin(angle)


def rotate_half_split(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + d/2]) by the angle of pair i (NeoX layout). x [..., d], cos/sin [..., d/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # static slices lower to XNNPACK; chunk/split does not
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def interleaved_to_half_split(d_k: int) -> Tensor:
    """Index permutation p with x[p] in half-split order: rotary on W[p] rows == interleaved rotary on W."""
    return torch.cat((torch.arange(0, d_k, 2), torch.arange(1, d_k, 2)))


def torchscale_scale(positions: Tensor, log_gamma: Tensor) -> Tensor:
    """1/√Z_n with Z_n = Σ_{t≤n} γ^t = (1−γ^{n+1})/(1−γ): torchscale's state normalization. → [..., H]."""
    gamma = torch.exp(log_gamma)
    z = (1.0 - torch.exp((positions.float().unsqueeze(-1) + 1.0) * log_gamma)) / (1.0 - gamma)
    return torch.rsqrt(z)


def act_fn(name: str):
    """The GLU activation by config name."""
    return {"swish": nn.functional.silu, "gelu": nn.functional.gelu}[name]
