"""Foreign config fields -> RetNetConfig, refusing what the canonical model cannot express."""
from __future__ import annotations

import math

from ..core.config import RetNetConfig
from ..errors import ConfigError

ACT = {"swish": "swish", "silu": "swish", "gelu": "gelu"}


def _refuse(fmt: str, option: str, why: str) -> None:
    raise ConfigError(f"unsupported {fmt} checkpoint: {option} ({why})")


def _act(fmt: str, name: str) -> str:
    if name not in ACT:
        _refuse(fmt, f"activation {name!r}", "supported: swish/silu, gelu")
    return ACT[name]


def from_torchscale(d: dict, fmt: str = "torchscale") -> RetNetConfig:
    """torchscale / fairseq / syncdoth field names (decoder_embed_dim, ...)."""
    if d.get("deepnorm"):
        _refuse(fmt, "deepnorm=True", "post-norm DeepNet residuals")
    if d.get("decoder_normalize_before") is False:
        _refuse(fmt, "decoder_normalize_before=False", "post-norm blocks")
    if d.get("use_glu") is False:
        _refuse(fmt, "use_glu=False", "legacy non-GLU FFN with biases (pre-Sep-2023 torchscale)")
    if d.get("xpos_rel_pos") or d.get("rel_pos_buckets"):
        _refuse(fmt, "xPos / relative-position buckets", "only rotary theta_shift is supported")
    if d.get("multiway"):
        _refuse(fmt, "multiway=True", "multiway (vision-language) experts")
    if d.get("use_ffn_rms_norm") or (d.get("subln") is False and d.get("use_glu") is False):
        _refuse(fmt, "sub-LayerNorm inside the FFN", "not part of the canonical block")
    try:
        D, H = int(d["decoder_embed_dim"]), int(d["decoder_retention_heads"])
        cfg = RetNetConfig(
            vocab_size=int(d["vocab_size"]), d_model=D, n_layers=int(d["decoder_layers"]), n_heads=H,
            value_dim=int(d.get("decoder_value_embed_dim") or 2 * D), ffn_dim=int(d.get("decoder_ffn_embed_dim") or 2 * D),
            activation=_act(fmt, d.get("activation_fn", "gelu")), rotary="torchscale",
            norm_eps=float(d.get("layernorm_eps", 1e-6)), group_norm_affine="none",
            embed_scale=1.0 if d.get("no_scale_embedding", True) else math.sqrt(D),
            embed_norm=bool(d.get("layernorm_embedding", False)),
            tie_embeddings=bool(d.get("share_decoder_input_output_embed", d.get("tie_word_embeddings", False))),
            decay="lm" if d.get("use_lm_decay") else "retnet", normalize="torchscale",
            bos_id=d.get("bos_token_id"), eos_id=_first(d.get("eos_token_id")), pad_id=d.get("pad_token_id"),
            extra={"source_format": fmt})
    except KeyError as exc:
        raise ConfigError(f"{fmt} config is missing {exc.args[0]}") from exc
    return cfg


def from_fla(d: dict) -> RetNetConfig:
    """flash-linear-attention RetNetConfig fields (hidden_size, num_heads, expand_v, ...)."""
    if d.get("use_short_conv"):
        _refuse("fla", "use_short_conv=True", "short convolutions before q/k/v")
    if float(d.get("expand_k", 1.0)) != 1.0:
        _refuse("fla", f"expand_k={d.get('expand_k')}", "key dim must equal hidden_size")
    if d.get("num_kv_heads") not in (None, d.get("num_heads")):
        _refuse("fla", f"num_kv_heads={d.get('num_kv_heads')}", "grouped key/value heads")
    if d.get("feature_map"):
        _refuse("fla", f"feature_map={d.get('feature_map')!r}", "feature maps on q/k")
    if d.get("use_output_gate") is False:
        _refuse("fla", "use_output_gate=False", "the swish output gate is part of the canonical MSR")
    if d.get("attn") or d.get("attnres_block_size"):
        _refuse("fla", "hybrid attention layers / attention residual blocks", "pure RetNet only")
    try:
        D, H = int(d["hidden_size"]), int(d["num_heads"])
        ffn = d.get("intermediate_size")
        if ffn is None:
            ratio = d.get("hidden_ratio", 2)  # fla's config default; GatedMLP itself falls back to 4 on None
            ffn = int(D * (4 if ratio is None else ratio) * 2 / 3)
            ffn = 256 * ((ffn + 255) // 256)
        cfg = RetNetConfig(
            vocab_size=int(d["vocab_size"]), d_model=D, n_layers=int(d["num_hidden_layers"]), n_heads=H,
            value_dim=int(D * float(d.get("expand_v", 2.0))), ffn_dim=int(ffn), activation=_act("fla", d.get("hidden_act", "swish")),
            rotary="fla", norm_eps=float(d.get("norm_eps", 1e-6)),
            group_norm_affine="shared" if d.get("elementwise_affine", True) else "none",
            embed_scale=1.0, embed_norm=False, tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            decay="retnet", normalize="none", bos_id=d.get("bos_token_id"), eos_id=_first(d.get("eos_token_id")),
            pad_id=d.get("pad_token_id"), extra={"source_format": "fla"})
    except KeyError as exc:
        raise ConfigError(f"fla config is missing {exc.args[0]}") from exc
    return cfg


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x
