"""The comparison a RetNet is judged against: a same-size decoder-only Transformer with a KV cache.

Same d_model, layers, vocabulary and GLU FFN as the RetNet config; Llama-style attention (head dim 64,
rotary, RMSNorm), random weights (speed and memory only), quantized by the same QuantPlan.

- ONNX (`export_baseline_onnx`): the graph onnxruntime-genai's model builder emits for a Llama on the CPU —
  GroupQueryAttention with rotary inside and one preallocated KV buffer per layer shared by past and
  present (`kv_onnx.build_graph`), quantized by the RetNet exporter's plan — driven by `kv_onnx.GQARunner`
  as genai's generator drives it (IOBinding, the cache written in place).
- ExecuTorch (`export_baseline_executorch`): ExecuTorch's own LLM recipe — KV-cache buffers
  [1, max_context, H, 64] written by `llama::update_cache` and read up to the position by
  `llama::custom_sdpa` — with the RetNet runner flavour's contract forward(tokens, input_pos) -> logits,
  lowered to XNNPACK by the RetNet exporter's `lower`. Its kernels are in the Python runtime only (the
  pip wheel ships no custom-ops library for the C++ harness).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from ..base.io_utils import atomic_output_dir
from ..contract import ONNX_STEP_FILE
from ..contract.manifest import Manifest
from ..contract.quant import QuantConfig
from ..core.config import RetNetConfig
from ..core.model import FeedForward
from ..core.ops import RMSNorm, rotary_cos_sin, rotate_half_split


HEAD_DIM = 64


def baseline_heads(cfg: RetNetConfig) -> int:
    return max(1, cfg.d_model // HEAD_DIM)


class Attention(nn.Module):
    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        D, self.H = cfg.d_model, baseline_heads(cfg)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, self.H * HEAD_DIM, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(self.H * HEAD_DIM, D, bias=False)


class Block(nn.Module):
    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.d_model, cfg.norm_eps), FeedForward(cfg)


class TransformerKV(nn.Module):
    """Pre-norm Llama-style decoder: the weights both baselines are made of (each target has its graph)."""

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
        self.register_buffer("freqs", freqs.float(), persistent=False)


# Loggers that print while torch.onnx / torch.export trace the baseline ("torchvision is not installed",
# unused axis names, pytree deprecations): not the user's business while a benchmark builds its yardstick.
EXPORT_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Warnings and library log lines off while the baseline is built (whoever calls: the CLI, a script)."""
    loggers = [logging.getLogger(name) for name in EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def kv_cache_bytes(cfg: RetNetConfig, context: int, bytes_per_value: int = 4) -> int:
    """The baseline's cache at `context` tokens: K and V, L layers, H x 64 values each (fp32 here)."""
    return 2 * cfg.n_layers * context * baseline_heads(cfg) * HEAD_DIM * bytes_per_value


def export_baseline_onnx(cfg: RetNetConfig, qc: QuantConfig, output: Path, seed: int = 0, log=lambda s: None) -> Path:
    """Random-weight TransformerKV -> the GroupQueryAttention graph onnxruntime-genai's builder would emit
    (`kv_onnx.build_graph`), quantized by the RetNet exporter's plan for the same linears."""
    from ..contract.quant import plan_quantization
    from ..exporters.onnx.quantize import quantize_onnx
    from ..exporters.onnx.weights import save_shared
    from .kv_onnx import build_graph

    model = _random_baseline(cfg, seed)
    log(f"  building the Transformer-KV baseline (GroupQueryAttention, {qc.scheme.value}) ...")
    proto = build_graph({k: v.numpy() for k, v in model.state_dict().items()}, cfg, baseline_heads(cfg))
    linears = {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    plan = plan_quantization(qc, linears)
    if plan.quantizes_anything:
        proto = quantize_onnx(proto, plan)
    for key, value in (("retnet_edge.baseline", "transformer-kv-gqa"), ("retnet_edge.config", cfg.to_json()),
                       ("retnet_edge.kv_heads", str(baseline_heads(cfg)))):
        proto.metadata_props.add(key=key, value=value)
    with atomic_output_dir(output, force=True) as tmp:
        save_shared({ONNX_STEP_FILE: proto}, tmp)
        Manifest.write(tmp, target="onnx", config=cfg, quant=qc, validation=None,
                       extra={"model": "transformer", "graph": "GroupQueryAttention, shared KV buffer",
                              "kv_heads": baseline_heads(cfg), "head_dim": HEAD_DIM})
    return output


class TransformerKVProgram(nn.Module):
    """ExecuTorch program: the baseline's weights + per-layer KV-cache buffers, one token per call."""

    def __init__(self, model: nn.Module, cfg: RetNetConfig, max_context: int):
        super().__init__()
        self.model, self.cfg, self.max_context, self.H = model, cfg, max_context, baseline_heads(cfg)
        for i in range(cfg.n_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(1, max_context, self.H, HEAD_DIM))
            self.register_buffer(f"v_cache_{i}", torch.zeros(1, max_context, self.H, HEAD_DIM))

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens [1,1], input_pos [1] -> logits [1,1,V]; attention reads the cache up to input_pos."""
        m = self.model
        pos = input_pos[0].item()
        torch._check(pos >= 0)
        torch._check(pos < self.max_context)
        x = m.embed(tokens)
        cos, sin = rotary_cos_sin(input_pos.view(1, 1), m.freqs)  # [1, 1, 1, Dh/2]
        for i, layer in enumerate(m.layers):
            a, h = layer.attn, layer.attn_norm(x)
            q = rotate_half_split(a.q_proj(h).view(1, 1, self.H, HEAD_DIM), cos, sin)
            k = rotate_half_split(a.k_proj(h).view(1, 1, self.H, HEAD_DIM), cos, sin)
            v = a.v_proj(h).view(1, 1, self.H, HEAD_DIM)
            kc, vc = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            torch.ops.llama.update_cache(k, kc, pos)
            torch.ops.llama.update_cache(v, vc, pos)
            o = torch.ops.llama.custom_sdpa(q, kc, vc, pos, None, 0, False)  # [1, 1, H, Dh]
            x = x + a.o_proj(o.reshape(1, 1, self.H * HEAD_DIM))
            x = x + layer.ffn(layer.ffn_norm(x))
        return m.lm_head(m.norm(x))


def export_baseline_executorch(cfg: RetNetConfig, qc: QuantConfig, output: Path, max_context: int, seed: int = 0,
                               log=lambda s: None) -> Path:
    """Random-weight TransformerKV -> .pte with KV-cache buffers (ExecuTorch's LLM recipe), quantized by the plan."""
    import json

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers llama::update_cache/custom_sdpa)

    from ..contract import DELEGATION_FILE, PTE_FILE
    from ..contract.quant import plan_quantization
    from ..exporters.executorch import lower, quantize_step

    model = _random_baseline(cfg, seed)
    plan = plan_quantization(qc, {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    if plan.quantizes_anything:
        model = quantize_step(model, plan)
    program = TransformerKVProgram(model, cfg, max_context).eval()
    methods = {"get_vocab_size": cfg.vocab_size, "get_max_context_len": max_context, "get_max_seq_len": max_context,
               "use_kv_cache": True, "get_n_layers": cfg.n_layers}
    log(f"  lowering the Transformer-KV baseline to ExecuTorch ({qc.scheme.value}, cache {max_context}) ...")
    args = (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    buffer, summary = lower(program, args, methods, mutable=False, log=log, guard=False)
    with atomic_output_dir(output, force=True) as tmp:
        (tmp / PTE_FILE).write_bytes(buffer)
        (tmp / DELEGATION_FILE).write_text(json.dumps({"flavor": "runner", **summary, "config": cfg.to_dict(),
                                                       "max_context": max_context}, indent=2))
        Manifest.write(tmp, target="executorch", config=cfg, quant=qc, validation=None,
                       extra={"model": "transformer", "max_context": max_context, "kv_heads": baseline_heads(cfg),
                              "head_dim": HEAD_DIM})
    return output


def _random_baseline(cfg: RetNetConfig, seed: int) -> TransformerKV:
    torch.manual_seed(seed)
    model = TransformerKV(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.ndim == 2 else p.fill_(1.0)
    return model
