"""The canonical RetNet decoder with its parallel and chunkwise forms (arXiv 2307.08621, §2).

Parameter names here are the native format's keys. The recurrent form lives in `step.py`; both share
the projections and norms defined here. Shape letters: B batch, T time, D d_model, H heads,
Dk/Dv head dims, V vocab.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import RetNetConfig
from .ops import (RMSNorm, act_fn, interleaved_to_half_split, log_decay, rotary_cos_sin, rotary_freqs,
                  rotate_half_split, torchscale_scale)


class MultiScaleRetention(nn.Module):
    """MSR: projections, rotary, per-head norm and swish gate; the retention core is form-specific.

    Key features are always rotated in half-split order: torchscale's interleaved pairs are gathered
    into that order first, so every form (and the step module) holds S with the same Dk order.
    """

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        D, Dv = cfg.d_model, cfg.value_dim
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, Dv, bias=False)
        self.g_proj = nn.Linear(D, Dv, bias=False)
        self.out_proj = nn.Linear(Dv, D, bias=False)
        self.g_norm = RMSNorm(cfg.head_dim_v, cfg.norm_eps, affine=cfg.group_norm_affine == "shared")
        self.cfg = cfg
        self.register_buffer("half_split", interleaved_to_half_split(cfg.head_dim_k), persistent=False)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B,T,D] -> q, k [B,H,T,Dk] (rotated; k scaled by Dk^-1/2), v [B,H,T,Dv]."""
        B, T, _ = x.shape
        H, Dk, Dv = self.cfg.state_shape
        q = self.q_proj(x).view(B, T, H, Dk).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H, Dk).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, Dv).transpose(1, 2)
        if self.cfg.rotary == "torchscale":  # pairs (2i, 2i+1) -> (i, i+Dk/2), as the step's permuted W_q/W_k
            q, k = q[..., self.half_split], k[..., self.half_split]
        q, k = rotate_half_split(q, cos, sin), rotate_half_split(k, cos, sin) * Dk**-0.5
        return q, k, v

    def gate_out(self, x: Tensor, o: Tensor) -> Tensor:
        """y = W_o(silu(W_g x) ⊙ GroupNorm(o)); o [B,H,T,Dv] -> y [B,T,D]."""
        B, H, T, Dv = o.shape
        o = self.g_norm(o).transpose(1, 2).reshape(B, T, H * Dv)
        return self.out_proj(nn.functional.silu(self.g_proj(x)) * o)


class FeedForward(nn.Module):
    """GLU FFN: fc2(act(fc1 x) ⊙ gate x)."""

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.act = act_fn(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)) * self.gate(x))


class RetNetLayer(nn.Module):
    """Pre-norm block: x += MSR(norm x); x += FFN(norm x)."""

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.retention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.retention = MultiScaleRetention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)


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


class RetNet(nn.Module):
    """RetNet decoder with parallel (`forward`), chunkwise and recurrent (`forward_recurrent`) forms."""

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.cfg = cfg
        self.dropout_p = 0.0  # residual dropout, set by the trainer; not part of the config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.layers = nn.ModuleList(RetNetLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("log_gamma", log_decay(cfg), persistent=False)  # [H]
        self.register_buffer("freqs", rotary_freqs(cfg), persistent=False)  # [Dk/2]

    @classmethod
    def empty(cls, cfg: RetNetConfig) -> "RetNet":
        """A model with uninitialised weights (no random-init pass: fast for 1B+ models), buffers set."""
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device="cpu")
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        model.log_gamma, model.freqs = log_decay(cfg), rotary_freqs(cfg)
        for layer in model.layers:
            layer.retention.half_split = interleaved_to_half_split(cfg.head_dim_k)
        return model

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> "RetNet":
        """Normal(0, std) for every matrix, ones for norms: a realistic scale for parity tests."""
        for name, p in self.named_parameters():
            with torch.no_grad():
                if p.ndim == 2:
                    p.normal_(0.0, std, generator=generator)
                else:
                    p.fill_(1.0)
        return self

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        x = self.embed(input_ids) * self.cfg.embed_scale
        return self.embed_norm(x) if self.embed_norm is not None else x

    def _run(self, input_ids: Tensor, retention) -> Tensor:
        drop = lambda y: nn.functional.dropout(y, self.dropout_p, self.training)  # noqa: E731 (training only)
        x = self.embed_tokens(input_ids)  # [B, T, D]
        for i, layer in enumerate(self.layers):
            h = layer.retention_norm(x)
            x = x + drop(layer.retention.gate_out(h, retention(i, layer.retention, h)))
            x = x + drop(layer.ffn(layer.ffn_norm(x)))
        return self.lm_head(self.norm(x))  # [B, T, V]

    def forward(self, input_ids: Tensor) -> Tensor:
        """Parallel form: input_ids [B,T] -> logits [B,T,V]. O(T²) memory; for training and evaluation."""
        T = input_ids.shape[1]
        cos, sin = rotary_cos_sin(torch.arange(T, device=input_ids.device), self.freqs)

        def retention(i: int, msr: MultiScaleRetention, h: Tensor) -> Tensor:
            q, k, v = msr.qkv(h, cos, sin)
            return parallel_retention(q, k, v, self.log_gamma, self.cfg.normalize)

        return self._run(input_ids, retention)

    def init_state(self, batch_size: int = 1, device: torch.device | None = None) -> list[Tensor]:
        """Zero recurrent state: n_layers tensors [B, H, Dk, Dv] fp32."""
        return [torch.zeros(batch_size, *self.cfg.state_shape, device=device) for _ in range(self.cfg.n_layers)]

    def forward_chunkwise(self, input_ids: Tensor, chunk_size: int = 64, state: list[Tensor] | None = None,
                          start_pos: int = 0, return_state: bool = False):
        """Chunkwise recurrent form, linear in T: logits [B,T,V] (and the final state if asked).

        `state`/`start_pos` continue a sequence: the state is the canonical unnormalized S.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        B, T = input_ids.shape
        states = list(state) if state is not None else self.init_state(B, input_ids.device)
        pos = torch.arange(start_pos, start_pos + T, device=input_ids.device)
        cos, sin = rotary_cos_sin(pos, self.freqs)
        if self.cfg.normalize == "torchscale":
            out_scale = torchscale_scale(pos, self.log_gamma).T[None, :, :, None]  # [1, H, T, 1]

        def retention(i: int, msr: MultiScaleRetention, h: Tensor) -> Tensor:
            q, k, v = msr.qkv(h, cos, sin)
            outs = []
            for s in range(0, T, chunk_size):
                sl = slice(s, s + chunk_size)
                o, states[i] = chunk_retention(q[:, :, sl], k[:, :, sl], v[:, :, sl], self.log_gamma, states[i])
                outs.append(o)
            o = torch.cat(outs, dim=2)  # [B, H, T, Dv]
            return o * out_scale if self.cfg.normalize == "torchscale" else o

        logits = self._run(input_ids, retention)
        return (logits, states) if return_state else logits

    def forward_recurrent(self, input_ids: Tensor) -> Tensor:
        """Recurrent form, token by token through the single-step module: logits [B,T,V]."""
        from .step import to_recurrent  # step.py builds on this module

        step = to_recurrent(self)
        B, T = input_ids.shape
        state = step.init_state(B)
        outs = []
        for t in range(T):
            pos = torch.full((B, 1), t, dtype=torch.long, device=input_ids.device)
            logits, *state = step(input_ids[:, t : t + 1], pos, *state)
            outs.append(logits)
        return torch.cat(outs, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path, dtype: str = "fp32", force: bool = False, extra_files=None):
        """Write the native format (config.json + model.safetensors) atomically; see native.save_pretrained."""
        from .native import save_pretrained

        return save_pretrained(self, path, dtype=dtype, force=force, extra_files=extra_files)
