"""Test helpers: checkpoints in the exact foreign formats, and reference forwards to compare against.

torchscale 0.3.0 (optional test dependency) is the oracle for torchscale, fairseq and syncdoth files;
for fla, whose forward needs GPU Triton kernels, `fla_reference_logits` re-derives the forward from fla's
pure-torch reference ops (fla/ops/retention/naive.py, rotary_embedding_ref) and its module layout.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from retnet_edge.checkpoints.tensors import LazyTensor, write_safetensors_streaming

TS_FIELDS = dict(vocab_size=101, decoder_embed_dim=64, decoder_value_embed_dim=128, decoder_retention_heads=4,
                 decoder_ffn_embed_dim=96, decoder_layers=2, activation_fn="swish", no_scale_embedding=False,
                 layernorm_embedding=True, share_decoder_input_output_embed=False, layernorm_eps=1e-6)


def import_torchscale():
    """torchscale 0.3.0 imports timm only for drop_path; a stub keeps its torchvision pin out."""
    if "timm.models.layers" not in sys.modules:
        stub = types.ModuleType("timm.models.layers")
        stub.drop_path = lambda x, *a, **k: x
        for name in ("timm", "timm.models"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["timm.models.layers"] = stub
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder

    return RetNetConfig, RetNetDecoder


def torchscale_decoder(seed: int = 0, std: float = 0.05, **fields):
    RetNetConfig, RetNetDecoder = import_torchscale()
    args = RetNetConfig(**{**TS_FIELDS, **fields})
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(args.vocab_size, args.decoder_embed_dim)
    dec = RetNetDecoder(args, embed_tokens=emb).eval()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if p.ndim == 2:
                p.normal_(0, std)
            else:
                p.uniform_(0.8, 1.2)
    return dec, {**TS_FIELDS, **fields}


@torch.no_grad()
def torchscale_logits(dec, ids: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
    if not recurrent:
        return dec(ids)[0]
    state: dict = {}
    return torch.cat([dec(ids[:, : t + 1], incremental_state=state)[0] for t in range(ids.shape[1])], dim=1)


def write_fla(path: Path, *, vocab=101, hidden=64, heads=4, layers=2, inter=96, fused=False, tied=False,
              dtype=torch.float32, std=0.05, seed=0, shards=1, extra_cfg=None, extra_keys=None) -> dict:
    """An fla-format HF directory (config.json + safetensors) with random weights, streamed to disk."""
    path.mkdir(parents=True, exist_ok=True)
    dv = 2 * hidden
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embeddings.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes.update({p + "attn_norm.weight": (hidden,), p + "mlp_norm.weight": (hidden,),
                       p + "attn.q_proj.weight": (hidden, hidden), p + "attn.k_proj.weight": (hidden, hidden),
                       p + "attn.v_proj.weight": (dv, hidden), p + "attn.g_proj.weight": (dv, hidden),
                       p + "attn.o_proj.weight": (hidden, dv), p + "attn.g_norm_swish_gate.weight": (dv // heads,),
                       p + "mlp.down_proj.weight": (hidden, inter)})
        if fused:
            shapes[p + "mlp.gate_proj.weight"] = (2 * inter, hidden)
        else:
            shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden)})
    shapes.update(extra_keys or {})

    def make(shape):
        return lambda: (torch.randn(shape, generator=g) * std if len(shape) == 2 else
                        1 + 0.2 * torch.rand(shape, generator=g)).to(dtype)

    items = [(k, LazyTensor(dtype, s, make(s))) for k, s in shapes.items()]
    cfg = {"model_type": "retnet", "hidden_size": hidden, "num_heads": heads, "num_hidden_layers": layers,
           "expand_k": 1, "expand_v": 2, "intermediate_size": inter, "hidden_act": "swish", "norm_eps": 1e-6,
           "vocab_size": vocab, "tie_word_embeddings": tied, "use_short_conv": False, "use_output_gate": True,
           "elementwise_affine": True, "fuse_norm": True, "fuse_swiglu": True, "bos_token_id": 1, "eos_token_id": 2,
           **(extra_cfg or {})}
    (path / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        write_safetensors_streaming(path / "model.safetensors", items, None)
    else:
        per = -(-len(items) // shards)
        wmap = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = items[i * per : (i + 1) * per]
            write_safetensors_streaming(path / name, part, None)
            wmap.update({k: name for k, _ in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return cfg


def _rms(x, w=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * w if w is not None else y


def _naive_retention(q, k, v):  # fla/ops/retention/naive.py, restated: scale d^-1/2, decay 1 - 2^(-5-h)
    _, H, T, d = q.shape
    s = (1 - torch.tensor(2.0).pow(-5.0 - torch.arange(H).float())).log2()
    n = torch.arange(T).float()
    mask = torch.exp2((n.unsqueeze(-1) - n) * s.view(-1, 1, 1)) * n.unsqueeze(-1).ge(n)
    return torch.einsum("bhqk,bhkd->bhqd", torch.einsum("bhqd,bhkd,hqk->bhqk", q * d**-0.5, k, mask), v)


def _rotary_ref(x, T, d):  # NeoX (non-interleaved) rotary, fla.modules.rotary.rotary_embedding_ref
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    f = torch.outer(torch.arange(T).float(), inv)  # [T, d/2]
    cos, sin = torch.cat([f.cos(), f.cos()], -1)[:, None], torch.cat([f.sin(), f.sin()], -1)[:, None]
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


@torch.no_grad()
def fla_reference_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """fla RetNetForCausalLM forward from its reference ops, reading fla key names directly."""
    sd = {k: v.float() for k, v in sd.items()}
    H, D = cfg["num_heads"], cfg["hidden_size"]
    B, T = ids.shape
    x = sd["model.embeddings.weight"][ids]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        h = _rms(x, sd[p + "attn_norm.weight"])
        q = _rotary_ref((h @ sd[p + "attn.q_proj.weight"].T).view(B, T, H, -1), T, D // H).transpose(1, 2)
        k = _rotary_ref((h @ sd[p + "attn.k_proj.weight"].T).view(B, T, H, -1), T, D // H).transpose(1, 2)
        v = (h @ sd[p + "attn.v_proj.weight"].T).view(B, T, H, -1).transpose(1, 2)
        o = _naive_retention(q, k, v).transpose(1, 2)  # [B, T, H, dv]
        g = (h @ sd[p + "attn.g_proj.weight"].T).view(B, T, H, -1)
        o = (_rms(o, sd[p + "attn.g_norm_swish_gate.weight"]) * F.silu(g)).reshape(B, T, -1)
        x = x + o @ sd[p + "attn.o_proj.weight"].T
        h = _rms(x, sd[p + "mlp_norm.weight"])
        if p + "mlp.up_proj.weight" in sd:
            gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        else:
            gate, up = (h @ sd[p + "mlp.gate_proj.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    head = sd.get("lm_head.weight", sd["model.embeddings.weight"])
    return _rms(x, sd["model.norm.weight"]) @ head.T


def write_torchscale(dec, fields: dict, d: Path) -> Path:
    """A torchscale `RetNetDecoder.state_dict()` in model.safetensors + its config.json."""
    from safetensors.torch import save_file

    d.mkdir()
    save_file({k: v.contiguous() for k, v in dec.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(fields))
    return d


def write_fairseq(dec, fields: dict, path: Path) -> Path:
    """A raw fairseq checkpoint: {"args": Namespace, "model": {"decoder.…"}}."""
    import argparse

    ckpt = {"args": argparse.Namespace(**fields, arch="retnet_base"),
            "model": {f"decoder.{k}": v for k, v in dec.state_dict().items()}, "optimizer_history": []}
    torch.save(ckpt, path)
    return path


def write_syncdoth(dec, fields: dict, d: Path, **cfg_over) -> Path:
    """A syncdoth/RetNet HF directory (model.* keys, lm_head, HF-style config)."""
    from safetensors.torch import save_file

    d.mkdir()
    sd = {("lm_head.weight" if k == "output_projection.weight" else f"model.{k}"): v.contiguous()
          for k, v in dec.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"))
    cfg = {k: v for k, v in fields.items() if k != "share_decoder_input_output_embed"}
    cfg.update(model_type="retnet", use_glu=True, use_lm_decay=False, tie_word_embeddings=False, pad_token_id=0,
               eos_token_id=2, bos_token_id=1, subln=True, deepnorm=False)
    cfg.update(cfg_over)
    (d / "config.json").write_text(json.dumps(cfg))
    return d
