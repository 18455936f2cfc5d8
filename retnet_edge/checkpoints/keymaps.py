"""Declarative key maps: foreign checkpoint names -> canonical names. `{n}` is the layer index.

Only these tables know foreign names. Keys in a checkpoint that no table entry (or ignore pattern)
claims are errors, listed by name; canonical keys left unfilled are reported by the shape check.
"""
from __future__ import annotations

import re

PER_LAYER_TORCHSCALE = {
    "layers.{n}.retention.q_proj.weight": "layers.{n}.retention.q_proj.weight",
    "layers.{n}.retention.k_proj.weight": "layers.{n}.retention.k_proj.weight",
    "layers.{n}.retention.v_proj.weight": "layers.{n}.retention.v_proj.weight",
    "layers.{n}.retention.g_proj.weight": "layers.{n}.retention.g_proj.weight",
    "layers.{n}.retention.out_proj.weight": "layers.{n}.retention.out_proj.weight",
    "layers.{n}.retention_layer_norm.weight": "layers.{n}.retention_norm.weight",
    "layers.{n}.ffn.fc1.weight": "layers.{n}.ffn.fc1.weight",  # activated branch
    "layers.{n}.ffn.gate.weight": "layers.{n}.ffn.gate.weight",
    "layers.{n}.ffn.fc2.weight": "layers.{n}.ffn.fc2.weight",
    "layers.{n}.final_layer_norm.weight": "layers.{n}.ffn_norm.weight",
}

# microsoft/torchscale RetNetDecoder.state_dict()
TORCHSCALE = {
    "embed_tokens.weight": "embed.weight",
    "layernorm_embedding.weight": "embed_norm.weight",
    "layer_norm.weight": "norm.weight",
    "output_projection.weight": "lm_head.weight",
    **PER_LAYER_TORCHSCALE,
}
TORCHSCALE_IGNORE = (r"retnet_rel_pos\.(angle|decay)",)  # recomputed from the config and checked against it

# raw fairseq checkpoint: {"args"/"cfg", "model": {"decoder.<torchscale key>"}}
FAIRSEQ = {f"decoder.{k}": v for k, v in TORCHSCALE.items()}
FAIRSEQ_IGNORE = (r"decoder\.retnet_rel_pos\.(angle|decay)", r"(decoder\.)?version", r"decoder\._float_tensor")

# syncdoth RetNetForCausalLM (HF): torchscale keys under `model.`, head `lm_head`
SYNCDOTH = {**{f"model.{k}": v for k, v in TORCHSCALE.items() if k != "output_projection.weight"},
            "lm_head.weight": "lm_head.weight"}
SYNCDOTH_IGNORE = (r"model\.retnet_rel_pos\.(angle|decay)",)

# fla-org/flash-linear-attention RetNetForCausalLM (HF)
FLA = {
    "model.embeddings.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{n}.attn_norm.weight": "layers.{n}.retention_norm.weight",
    "model.layers.{n}.mlp_norm.weight": "layers.{n}.ffn_norm.weight",
    "model.layers.{n}.attn.q_proj.weight": "layers.{n}.retention.q_proj.weight",
    "model.layers.{n}.attn.k_proj.weight": "layers.{n}.retention.k_proj.weight",
    "model.layers.{n}.attn.v_proj.weight": "layers.{n}.retention.v_proj.weight",
    "model.layers.{n}.attn.g_proj.weight": "layers.{n}.retention.g_proj.weight",
    "model.layers.{n}.attn.o_proj.weight": "layers.{n}.retention.out_proj.weight",
    "model.layers.{n}.attn.g_norm_swish_gate.weight": "layers.{n}.retention.g_norm.weight",  # one [d_v] for all heads
    "model.layers.{n}.attn.g_norm.weight": "layers.{n}.retention.g_norm.weight",  # unfused-norm checkpoints
    "model.layers.{n}.mlp.gate_proj.weight": "layers.{n}.ffn.fc1.weight",  # activated (swish) branch
    "model.layers.{n}.mlp.up_proj.weight": "layers.{n}.ffn.gate.weight",
    "model.layers.{n}.mlp.down_proj.weight": "layers.{n}.ffn.fc2.weight",
}
# 2024 - Feb 2025 checkpoints fuse gate and up into one gate_proj [2I, H]: first half gate, second half up
FLA_FUSED = {"model.layers.{n}.mlp.gate_proj.weight": ("layers.{n}.ffn.fc1.weight", "layers.{n}.ffn.gate.weight")}
FLA_IGNORE: tuple[str, ...] = ()


def expand(table: dict, n_layers: int) -> dict:
    """Instantiate `{n}` for every layer."""
    out = {}
    for src, dst in table.items():
        if "{n}" in src:
            for n in range(n_layers):
                out[src.format(n=n)] = dst.format(n=n) if isinstance(dst, str) else tuple(d.format(n=n) for d in dst)
        else:
            out[src] = dst
    return out


def ignored(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)
