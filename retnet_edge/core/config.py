"""`RetNetConfig`: one vocabulary for every checkpoint format.

Converters translate foreign config fields into these names; nothing downstream reads a foreign name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

ACTIVATIONS = ("swish", "gelu")
ROTARY = ("torchscale", "fla")  # interleaved pairs + linspace angles | NeoX half split + arange angles
DECAYS = ("retnet", "lm")  # 1 - 2^(-5-h) | 1 - exp(linspace(log 1/32, log 1/512, H))
NORMALIZE = ("none", "torchscale")  # torchscale's extra per-row scalings (removed by the head norm up to eps)
GROUP_NORM_AFFINE = ("none", "shared")  # no weight | one weight [d_v] shared by all heads (fla)


# Far beyond any published RetNet (the largest public ones: 32 layers, d_model 4096, vocab ~100k), small
# enough that a header-only command never loops or allocates for absurd values (issue 14).
LIMITS = {"vocab_size": 4_000_000, "d_model": 65_536, "n_layers": 1_024, "n_heads": 1_024, "value_dim": 131_072,
          "ffn_dim": 1_048_576}
EXTRA_MAX_BYTES = 64 * 1024  # `extra` holds a source format and the like: a few hundred bytes in practice


@dataclass
class RetNetConfig:
    """Shape and math options of a RetNet decoder (paper: arXiv 2307.08621)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    value_dim: int = 0  # 0 -> 2 * d_model (the paper's default)
    ffn_dim: int = 0  # 0 -> 2 * d_model
    activation: str = "swish"  # the GLU's activated branch
    rotary: str = "torchscale"
    norm_eps: float = 1e-6
    group_norm_affine: str = "none"
    embed_scale: float = 1.0  # 1 or sqrt(d_model)
    embed_norm: bool = False  # RMSNorm right after the embedding (torchscale `layernorm_embedding`)
    tie_embeddings: bool = False
    decay: str = "retnet"
    normalize: str = "none"
    rope_theta: float = 10000.0
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provenance only; never read by the math

    def __post_init__(self) -> None:
        if not self.value_dim:
            self.value_dim = 2 * self.d_model
        if not self.ffn_dim:
            self.ffn_dim = 2 * self.d_model
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "value_dim", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {str(value)[:40]!r}")
            if value > LIMITS[name]:  # a typo'd or hostile config must not make anything allocate or loop
                raise ConfigError(f"config field {name}={value} is beyond any supported model (max {LIMITS[name]:,})")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.value_dim % self.n_heads:
            raise ConfigError(f"value_dim={self.value_dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim_k % 2:
            raise ConfigError(f"rotary needs an even key head dim, got d_k={self.head_dim_k}")
        choices = {
            "activation": ACTIVATIONS,
            "rotary": ROTARY,
            "decay": DECAYS,
            "normalize": NORMALIZE,
            "group_norm_affine": GROUP_NORM_AFFINE,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config field {name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
                   for v in (self.norm_eps, self.embed_scale, self.rope_theta)):  # Infinity made NaN logits
            raise ConfigError("norm_eps, embed_scale and rope_theta must be positive finite numbers")
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}={value} is outside the vocabulary (size {self.vocab_size})")
        self._check_extra()

    def _check_extra(self) -> None:
        """`extra` is provenance, copied into the manifest and every graph: a JSON object of bounded size
        (200 MB there made an 801 MB artifact from a 0.7 MB model, issue 29)."""
        if not isinstance(self.extra, dict):
            raise ConfigError(f"config field extra must be a JSON object, got {type(self.extra).__name__}")
        try:
            size = len(json.dumps(self.extra, default=str).encode())
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"config field extra is not JSON-serialisable ({exc})") from exc
        if size > EXTRA_MAX_BYTES:
            raise ConfigError(f"config field extra holds {size:,} bytes of JSON; at most {EXTRA_MAX_BYTES:,} "
                              "(it is provenance only, copied into every artifact)")

    @property
    def head_dim_k(self) -> int:
        return self.d_model // self.n_heads

    @property
    def head_dim_v(self) -> int:
        return self.value_dim // self.n_heads

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Per-layer, per-sequence recurrent state shape (H, d_k, d_v)."""
        return (self.n_heads, self.head_dim_k, self.head_dim_v)

    def parameter_count(self) -> int:
        """Parameters of the canonical model (a tied head counted once)."""
        D, Dv, F, V, L = self.d_model, self.value_dim, self.ffn_dim, self.vocab_size, self.n_layers
        per_layer = 2 * D * D + 3 * D * Dv + 3 * D * F + 2 * D + (self.head_dim_v if self.group_norm_affine == "shared" else 0)
        head = 0 if self.tie_embeddings else V * D
        return V * D + L * per_layer + D + (D if self.embed_norm else 0) + head

    def check_fits_in_memory(self, what: str) -> None:
        """Refuse, before allocating, a model whose fp32 weights exceed this machine's physical memory."""
        need = 4 * self.parameter_count()
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not POSIX: no check
            return
        if need > total:
            raise ConfigError(f"{what} needs {need / 2**30:,.1f} GiB for its fp32 weights; this machine has "
                              f"{total / 2**30:,.1f} GiB")

    def state_bytes(self, batch_size: int = 1) -> int:
        """Bytes of the whole fp32 recurrent state: L * B * H * d_k * d_v * 4."""
        return 4 * batch_size * self.n_layers * math.prod(self.state_shape)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RetNetConfig":
        """Build from a dict; unknown fields raise ConfigError listing them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise ConfigError(f"unknown config fields: {', '.join(unknown[:8])}{more}")
        missing = sorted(n for n in ("vocab_size", "d_model", "n_layers", "n_heads") if n not in data)
        if missing:
            raise ConfigError(f"config is missing required fields: {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"invalid config: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
