"""The single-step rewrite: one token + position + state in, logits + new state out (paper eq. 6).

`RetNetStep` is the graph every exporter starts from. Its state is explicit and functional —
`forward(input_ids, position_ids, *past) -> (logits, *present)` — zero-initialised, so there is no
first-step branch, and nothing in it grows with the position: constants are precomputed buffers and
every op has a static shape. The ops are chosen to lower to XNNPACK in one partition: norms as 4-D
means, the state products as bmm, and torchscale's interleaved rotary turned into the half-split form
by permuting W_q/W_k rows offline (exact: q·k is invariant under a shared permutation).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .model import RetNet
from .ops import interleaved_to_half_split, rotary_cos_sin, rotate_half_split, torchscale_scale


def _permute_rows(linear: nn.Linear, n_heads: int, perm: Tensor) -> None:
    """Reorder each head's output rows of a [H*Dk, D] projection by perm (new Parameter, source untouched)."""
    W = linear.weight.detach()
    D_out, D_in = W.shape
    W = W.view(n_heads, D_out // n_heads, D_in)[:, perm].reshape(D_out, D_in)
    linear.weight = nn.Parameter(W.clone())


class RetNetStep(nn.Module):
    """Recurrent-only step module over a RetNet's weights (shared, not copied, except permuted W_q/W_k)."""

    def __init__(self, model: RetNet):
        super().__init__()
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        m = copy.deepcopy(model, memo=shared)  # fresh modules, same tensors
        cfg = self.cfg = m.cfg
        self.embed, self.embed_norm, self.layers, self.norm, self.lm_head = (
            m.embed, m.embed_norm, m.layers, m.norm, m.lm_head)
        if cfg.rotary == "torchscale":
            perm = interleaved_to_half_split(cfg.head_dim_k)
            for layer in self.layers:
                _permute_rows(layer.retention.q_proj, cfg.n_heads, perm)
                _permute_rows(layer.retention.k_proj, cfg.n_heads, perm)
        self.register_buffer("log_gamma", m.log_gamma.clone(), persistent=False)  # [H]
        self.register_buffer("gamma", m.log_gamma.exp().view(1, cfg.n_heads, 1, 1), persistent=False)
        self.register_buffer("freqs", m.freqs.clone(), persistent=False)  # [Dk/2]

    def init_state(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        """Zero state: n_layers fp32 tensors [B, H, Dk, Dv]."""
        return tuple(torch.zeros(batch_size, *self.cfg.state_shape) for _ in range(self.cfg.n_layers))

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """input_ids, position_ids [B,1] int64; past L x [B,H,Dk,Dv] -> (logits [B,1,V], *present)."""
        cfg = self.cfg
        B = input_ids.shape[0]
        H, Dk, Dv = cfg.state_shape
        x = self.embed(input_ids) * cfg.embed_scale  # [B, 1, D]
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        cos, sin = rotary_cos_sin(position_ids, self.freqs)  # [B, 1, Dk/2], broadcast over heads
        if cfg.normalize == "torchscale":
            out_scale = torchscale_scale(position_ids, self.log_gamma).view(B * H, 1, 1)
        present = []
        for layer, S in zip(self.layers, past):
            msr = layer.retention
            h = layer.retention_norm(x)
            q = rotate_half_split(msr.q_proj(h).view(B, H, Dk), cos, sin)
            k = rotate_half_split(msr.k_proj(h).view(B, H, Dk), cos, sin) * Dk**-0.5
            v = msr.v_proj(h).view(B * H, 1, Dv)
            kv = torch.bmm(k.view(B * H, Dk, 1), v).view(B, H, Dk, Dv)  # k_nᵀ v_n
            S = S * self.gamma + kv  # S_n = γ S_{n−1} + k_nᵀ v_n
            o = torch.bmm(q.view(B * H, 1, Dk), S.view(B * H, Dk, Dv))  # [B*H, 1, Dv]
            if cfg.normalize == "torchscale":
                o = o * out_scale  # torchscale's S_n/√Z_n, a function of the position only
            o = msr.g_norm(o.view(B, H, Dv)).view(B, 1, H * Dv)
            x = x + msr.out_proj(nn.functional.silu(msr.g_proj(h)) * o)
            x = x + layer.ffn(layer.ffn_norm(x))
            present.append(S)
        return (self.lm_head(self.norm(x)), *present)


def to_recurrent(model: RetNet) -> RetNetStep:
    """Rewrite a RetNet into its single-step recurrent module (weights shared, eval mode)."""
    return RetNetStep(model).eval()


class RetNetPrefill(nn.Module):
    """One chunk of the chunkwise form over a RetNetStep's weights: the prompt graph of every exporter.

    forward(input_ids[B,T], position_ids[B,T], *past) -> (logits[B,T,V], *present), positions consecutive.
    T is dynamic; work is O(T²) inside the chunk, so runners feed long prompts chunk by chunk (paper eq. 7).
    """

    def __init__(self, step: RetNetStep):
        super().__init__()
        # the step's own modules and buffers (no copy), under the same names, so exported node names match
        self.cfg = step.cfg
        self.embed, self.embed_norm, self.layers, self.norm, self.lm_head = (
            step.embed, step.embed_norm, step.layers, step.norm, step.lm_head)
        for name in ("log_gamma", "freqs"):
            self.register_buffer(name, getattr(step, name), persistent=False)

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        from .model import chunk_retention

        st, cfg = self, self.cfg
        B, T = input_ids.shape
        H, Dk, Dv = cfg.state_shape
        x = st.embed(input_ids) * cfg.embed_scale  # [B, T, D]
        if st.embed_norm is not None:
            x = st.embed_norm(x)
        cos, sin = rotary_cos_sin(position_ids, st.freqs)  # [B, T, Dk/2]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, Dk/2]
        if cfg.normalize == "torchscale":
            out_scale = torchscale_scale(position_ids, st.log_gamma).transpose(1, 2).unsqueeze(-1)  # [B, H, T, 1]
        present = []
        for layer, S in zip(st.layers, past):
            msr = layer.retention
            h = layer.retention_norm(x)
            q = rotate_half_split(msr.q_proj(h).view(B, T, H, Dk).transpose(1, 2), cos, sin)
            k = rotate_half_split(msr.k_proj(h).view(B, T, H, Dk).transpose(1, 2), cos, sin) * Dk**-0.5
            v = msr.v_proj(h).view(B, T, H, Dv).transpose(1, 2)
            o, S = chunk_retention(q, k, v, st.log_gamma, S)  # o [B, H, T, Dv]
            if cfg.normalize == "torchscale":
                o = o * out_scale
            x = x + msr.gate_out(h, o)
            x = x + layer.ffn(layer.ffn_norm(x))
            present.append(S)
        return (st.lm_head(st.norm(x)), *present)


def to_prefill(step: RetNetStep) -> RetNetPrefill:
    """The chunk (prompt) graph sharing a step module's weights."""
    return RetNetPrefill(step).eval()
