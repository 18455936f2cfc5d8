"""The retention cores: the only part of a RetNet layer that differs between its three forms (paper §2).

The decoder body (`model.DecoderStack.run`) computes q, k, v and hands them to a core; the core returns
the retention output and the layer's new state. Every core takes and gives the same layout, so the
body never knows which form it runs:

    q, k [B, T, H, Dk] (rotated, k scaled by Dk^-1/2), v [B, T, H, Dv], state [B, H, Dk, Dv] | None
    -> o [B, T, H, Dv], state' [B, H, Dk, Dv] | None

`ParallelCore` (eq. 5, training and scoring), `ChunkCore` (eq. 7, prompts; with `chunk_size=None` one
chunk of any length, the prefill graph) and `StepCore` (eq. 6, one token, the decode graph). A core is
built per call with the positions it serves, so position-only terms (torchscale's 1/√Z_n) are computed
once per forward, not once per layer.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .ops import torchscale_scale


class RetentionCore(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]: ...


def parallel_retention(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, normalize: str) -> Tensor:
    """O = (Q Kᵀ ⊙ D) V with D_nm = γ^(n−m) for n ≥ m (paper eq. 5). q,k [B,H,T,Dk] -> [B,H,T,Dv]."""
    T = q.shape[2]
    idx = torch.arange(T, device=q.device)
    diff = (idx[:, None] - idx[None, :]).float()  # [T, T]
    decay = torch.exp(diff * log_gamma[:, None, None]).masked_fill(diff < 0, 0.0)  # [H, T, T]
    if normalize == "torchscale":  # decay rows / √Z_n
        decay = decay / decay.sum(dim=-1, keepdim=True).sqrt()
    scores = (q @ k.transpose(-1, -2)) * decay  # [B, H, T, T]
    if normalize == "torchscale":  # score rows / clamp(Σ|row|, 1, 5e4)
        scores = scores / scores.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1, max=5e4)
    return scores @ v


def chunk_retention(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of the chunkwise form (paper eq. 7). q,k [B,H,C,Dk], state R [B,H,Dk,Dv] -> (o, R')."""
    C = q.shape[2]
    j = torch.arange(C, device=q.device).float()
    lg = log_gamma[:, None]  # [H, 1]
    inner = parallel_retention(q, k, v, log_gamma, "none")
    cross = (q @ state) * torch.exp((j + 1) * lg)[..., None]  # rows scaled by γ^(j+1)
    k_decayed = k * torch.exp((C - 1 - j) * lg)[..., None]  # [B, H, C, Dk]
    new_state = k_decayed.transpose(-1, -2) @ v + torch.exp(C * lg)[..., None] * state
    return inner + cross, new_state


def _heads_first(*xs: Tensor) -> tuple[Tensor, ...]:
    return tuple(x.transpose(1, 2) for x in xs)  # [B, T, H, d] <-> [B, H, T, d]


class ParallelCore:
    """Eq. 5 over the whole sequence; no state (torchscale's normalization is applied inside)."""

    def __init__(self, log_gamma: Tensor, normalize: str):
        self.log_gamma, self.normalize = log_gamma, normalize

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor | None) -> tuple[Tensor, None]:
        o = parallel_retention(*_heads_first(q, k, v), self.log_gamma, self.normalize)
        return o.transpose(1, 2), None


class ChunkCore:
    """Eq. 7: chunks of `chunk_size` carrying the state (None: the whole input is one chunk).

    positions [T] or [B, T] are only needed for torchscale's output scale 1/√Z_n.
    """

    def __init__(self, log_gamma: Tensor, positions: Tensor, normalize: str, chunk_size: int | None = None):
        self.log_gamma, self.chunk_size = log_gamma, chunk_size
        # [..., T, H, 1]: torchscale reads S_n/√Z_n, a function of the position alone
        self.out_scale = torchscale_scale(positions, log_gamma).unsqueeze(-1) if normalize == "torchscale" else None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = _heads_first(q, k, v)  # [B, H, T, d]
        T = q.shape[2]
        if self.chunk_size is None:  # one chunk of dynamic length: the exported prefill graph
            o, state = chunk_retention(q, k, v, self.log_gamma, state)
        else:
            outs = []
            for s in range(0, T, self.chunk_size):
                sl = slice(s, s + self.chunk_size)
                o, state = chunk_retention(q[:, :, sl], k[:, :, sl], v[:, :, sl], self.log_gamma, state)
                outs.append(o)
            o = torch.cat(outs, dim=2)
        o = o.transpose(1, 2)  # [B, T, H, Dv]
        return (o * self.out_scale if self.out_scale is not None else o), state


def state_chain(q: Tensor, k: Tensor, v: Tensor, S: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor]:
    """q, k [B,1,H,Dk], v [B,1,H,Dv], S [B,H,Dk,Dv], gamma broadcast to S -> (o [B*H,1,Dv], S'): eq. 6 as
    bmm / mul / add / bmm, the ops model.onnx and the io-flavour program run."""
    B, _, H, Dk = q.shape
    Dv = v.shape[-1]
    kv = torch.bmm(k.view(B * H, Dk, 1), v.view(B * H, 1, Dv)).view(B, H, Dk, Dv)  # k_nᵀ v_n
    S = S * gamma + kv  # S_n = γ S_{n−1} + k_nᵀ v_n
    return torch.bmm(q.view(B * H, 1, Dk), S.view(B * H, Dk, Dv)), S


class StepCore:
    """Eq. 6 for one token: S_n = γ S_{n−1} + k_nᵀ v_n, o_n = q_n S_n.

    Written for the exporters: the state products are bmm and every shape is static (T = 1), so the
    step lowers to one XNNPACK partition and nothing in it depends on the position. The state is the
    contract's [B, H, Dk, Dv]. A target that wants another layout or a fused op subclasses it beside its
    exporter (exporters/onnx/fused.py, exporters/executorch.py) and passes it in (`RetNetStep.with_core`).
    """

    def __init__(self, gamma: Tensor, log_gamma: Tensor, positions: Tensor, normalize: str):
        self.gamma = gamma  # [1, H, 1, 1], precomputed (no exp in the step graph)
        self.log_gamma = log_gamma  # [H] log γ (a fused op takes the log-decay)
        B, H = positions.shape[0], gamma.shape[1]
        # [B*H, 1, 1]: torchscale's S_n/√Z_n, only computed when the checkpoint uses it
        self.out_scale = (torchscale_scale(positions, log_gamma).view(B * H, 1, 1)
                          if normalize == "torchscale" else None)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, S):
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        o, S = state_chain(q, k, v, S, self.gamma)  # [B*H, 1, Dv]
        if self.out_scale is not None:
            o = o * self.out_scale
        return o.view(B, 1, H, Dv), S
