"""The canonical RetNet decoder: one layer stack, three forms (arXiv 2307.08621, §2).

`DecoderStack.run` is the only place the layer sequence lives: embedding, then per layer
x += MSR(norm x) and x += FFN(norm x), then the head. The forms differ only in the retention core they
pass it (`retention.py`): `RetNet.forward` (parallel), `forward_chunkwise`, `forward_recurrent`, and
the exported step and prefill modules (`step.py`) are all this body. Parameter names here are the
native format's keys. Shape letters: B batch, T time, D d_model, H heads, Dk/Dv head dims, V vocab.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .config import RetNetConfig
from .ops import (
    RMSNorm,
    act_fn,
    interleaved_to_half_split,
    log_decay,
    rotary_cos_sin,
    rotary_freqs,
    rotate_half_split,
)
from .retention import ChunkCore, ParallelCore, RetentionCore, StepCore


class MultiScaleRetention(nn.Module):
    """MSR: projections, rotary, per-head norm and swish gate; the retention core is form-specific.

    Key features are always rotated in half-split order. A torchscale checkpoint's interleaved pairs are
    gathered into that order here (`half_split`); the step rewrite permutes W_q/W_k rows instead and sets
    `half_split` to None, so every form holds S with the same Dk order.
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
        self.register_buffer("half_split", interleaved_to_half_split(cfg.head_dim_k) if cfg.rotary == "torchscale"
                             else None, persistent=False)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B,T,D], cos/sin [..., T, 1, Dk/2] -> q, k [B,T,H,Dk] (rotated; k scaled by Dk^-1/2), v [B,T,H,Dv]."""
        B, T, _ = x.shape
        H, Dk, Dv = self.cfg.state_shape
        q = self.q_proj(x).view(B, T, H, Dk)
        k = self.k_proj(x).view(B, T, H, Dk)
        if self.half_split is not None:  # torchscale pairs (2i, 2i+1) -> (i, i+Dk/2)
            q, k = q[..., self.half_split], k[..., self.half_split]
        q, k = rotate_half_split(q, cos, sin), rotate_half_split(k, cos, sin) * Dk**-0.5
        return q, k, self.v_proj(x).view(B, T, H, Dv)

    def gate_out(self, x: Tensor, o: Tensor) -> Tensor:
        """y = W_o(silu(W_g x) ⊙ GroupNorm(o)); x [B,T,D], o [B,T,H,Dv] -> y [B,T,D]."""
        B, T, H, Dv = o.shape
        o = self.g_norm(o).reshape(B, T, H * Dv)
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
    """Pre-norm block: x += MSR(norm x); x += FFN(norm x).

    Its whole computation, retention core included, runs inside this module's call, so every node an
    exporter traces from it carries the layer's scope (`layers.3/...`): the streamed ONNX export
    (`exporters/stamp.py`) finds one layer's nodes by that scope and stamps them out per layer.
    """

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.retention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.retention = MultiScaleRetention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, core: "RetentionCore", S: Tensor | None,
                drop=lambda y: y) -> tuple[Tensor, Tensor | None]:
        """x [B,T,D], state [B,H,Dk,Dv] (or None) -> (x', state'); `drop` is the stack's residual dropout."""
        h = self.retention_norm(x)
        o, S = core(*self.retention.qkv(h, cos, sin), S)  # o [B, T, H, Dv]
        x = x + drop(self.retention.gate_out(h, o))
        x = x + drop(self.ffn(self.ffn_norm(x)))
        return x, S


class DecoderStack(nn.Module):
    """Embedding, layers and head, and `run`: the one decoder body every form and exported graph calls.

    Subclasses add a `forward` that picks a retention core; `adopt` lets a subclass be built over another
    stack's modules (the step and prefill modules share the model's tensors, and their exported node
    names follow these attribute names: `/model/layers.3.retention.q_proj/MatMul`).
    """

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

    def adopt(self, other: "DecoderStack") -> None:
        """Take other's modules and buffers (no copy): called from a subclass __init__ instead of super's."""
        nn.Module.__init__(self)
        self.cfg, self.dropout_p = other.cfg, 0.0
        self.embed, self.embed_norm, self.layers, self.norm, self.lm_head = (
            other.embed, other.embed_norm, other.layers, other.norm, other.lm_head)
        for name in ("log_gamma", "freqs"):
            self.register_buffer(name, getattr(other, name), persistent=False)

    def init_state(self, batch_size: int = 1, device: torch.device | None = None) -> list[Tensor]:
        """Zero recurrent state: n_layers fp32 tensors [B, H, Dk, Dv]."""
        return [torch.zeros(batch_size, *self.cfg.state_shape, device=device) for _ in range(self.cfg.n_layers)]

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        x = self.embed(input_ids) * self.cfg.embed_scale
        return self.embed_norm(x) if self.embed_norm is not None else x

    def _drop(self, y: Tensor) -> Tensor:
        # a Python branch, not an op: eval-mode graphs (every export) carry no dropout node
        return nn.functional.dropout(y, self.dropout_p, True) if self.training and self.dropout_p else y

    def run(self, input_ids: Tensor, positions: Tensor, core: RetentionCore,
            past: Sequence[Tensor | None]) -> tuple[Tensor, list[Tensor | None]]:
        """input_ids [B,T], positions [T] or [B,T], past L x [B,H,Dk,Dv] (or None) -> (logits [B,T,V], present)."""
        x = self.embed_tokens(input_ids)  # [B, T, D]
        cos, sin = rotary_cos_sin(positions, self.freqs)  # [..., T, 1, Dk/2], broadcast over heads
        present = []
        for layer, S in zip(self.layers, past):
            x, S = layer(x, cos, sin, core, S, self._drop)
            present.append(S)
        return self.lm_head(self.norm(x)), present  # [B, T, V]


class RetNet(DecoderStack):
    """RetNet decoder with parallel (`forward`), chunkwise and recurrent (`forward_recurrent`) forms."""

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
            if cfg.rotary == "torchscale":
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

    def forward(self, input_ids: Tensor) -> Tensor:
        """Parallel form: input_ids [B,T] -> logits [B,T,V]. O(T²) memory; for training and evaluation."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        core = ParallelCore(self.log_gamma, self.cfg.normalize)
        return self.run(input_ids, positions, core, [None] * self.cfg.n_layers)[0]

    def forward_chunkwise(self, input_ids: Tensor, chunk_size: int = 64, state: list[Tensor] | None = None,
                          start_pos: int = 0, return_state: bool = False):
        """Chunkwise recurrent form, linear in T: logits [B,T,V] (and the final state if asked).

        `state`/`start_pos` continue a sequence: the state is the canonical unnormalized S.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        B, T = input_ids.shape
        past = list(state) if state is not None else self.init_state(B, input_ids.device)
        positions = torch.arange(start_pos, start_pos + T, device=input_ids.device)
        core = ChunkCore(self.log_gamma, positions, self.cfg.normalize, chunk_size)
        logits, present = self.run(input_ids, positions, core, past)
        return (logits, present) if return_state else logits

    def forward_recurrent(self, input_ids: Tensor) -> Tensor:
        """Recurrent form, token by token (paper eq. 6): logits [B,T,V]."""
        B, T = input_ids.shape
        gamma = self.log_gamma.exp().view(1, -1, 1, 1)
        state: list = self.init_state(B, input_ids.device)
        outs = []
        for t in range(T):
            pos = torch.full((B, 1), t, dtype=torch.long, device=input_ids.device)
            logits, state = self.run(input_ids[:, t : t + 1], pos,
                                     StepCore(gamma, self.log_gamma, pos, self.cfg.normalize), state)
            outs.append(logits)
        return torch.cat(outs, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
