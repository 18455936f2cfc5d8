"""A checkpoint read one module at a time: what the streamed export and its gate work from.

`load()` materialises the whole fp32 model (4 bytes a parameter: 5.3 GB for 1.3B, 27 GB for 7B). The
streamed ONNX export (`exporters/stamp.py`) and the layer-streamed validation reference
(`exporters/reference.py`) instead read each layer's tensors from the memory-mapped / lazily read
checkpoint when they reach it, upcast per tensor (bf16/fp16 checkpoints are read as they are), apply the
step rewrite to that layer alone (`step.rewrite_layer`), and drop it before the next one. Peak memory is
then one layer plus the embedding and head, independent of the number of layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..core.config import RetNetConfig
from ..core.model import DecoderStack, RetNetLayer
from ..core.ops import RMSNorm, interleaved_to_half_split, log_decay, rotary_freqs
from ..core.step import rewrite_layer
from . import Format
from .loader import get_format, resolve_path
from .tensors import LazyTensor

OUTER = ("embed.weight", "embed_norm.weight", "norm.weight", "lm_head.weight")  # everything outside the layers


@dataclass
class ModelWeights:
    """A checkpoint's config and canonical tensors (lazy: nothing is read until asked for)."""

    path: Path
    format: str
    cfg: RetNetConfig
    tensors: dict[str, LazyTensor]

    def num_parameters(self) -> int:
        return self.cfg.parameter_count()

    def read(self, name: str) -> Tensor:
        """One canonical tensor as fp32 (the tied head reads the embedding)."""
        if name == "lm_head.weight" and self.cfg.tie_embeddings:
            name = "embed.weight"
        return self.tensors[name].read().float()

    def layer(self, i: int) -> RetNetLayer:
        """Layer i as an fp32 module with the step rewrite applied (W_q/W_k rows in half-split order)."""
        prefix = f"layers.{i}."
        with torch.device("meta"):
            layer = RetNetLayer(self.cfg)
        layer.load_state_dict({k[len(prefix):]: self.read(k) for k in self.tensors if k.startswith(prefix)},
                              strict=True, assign=True)
        if self.cfg.rotary == "torchscale":  # the buffer was built on meta: the real permutation, then the rewrite
            layer.retention.half_split = interleaved_to_half_split(self.cfg.head_dim_k)
        return rewrite_layer(layer, self.cfg.n_heads).eval()

    def outer(self) -> dict[str, Tensor]:
        """The tensors outside the layers (embedding, norms, head), fp32."""
        return {k: self.read(k) for k in OUTER if k in self.tensors or (k == "lm_head.weight" and self.cfg.tie_embeddings)}


def open_weights(path: str | Path, format: str = "auto") -> ModelWeights:
    """A checkpoint's weights, checked against its config from headers alone (`Format.tensors` checks);
    no tensor is read."""
    p = resolve_path(path)
    fmt: Format = get_format(p, format)
    cfg = fmt.read_config(p)
    return ModelWeights(p, fmt.name, cfg, fmt.tensors(p, cfg))


class LazyLayers:
    """The layers of a checkpoint as an iterable: each one is read when the loop reaches it and released
    when it moves on. `transform` edits a layer after reading (the gate's weight rounding)."""

    def __init__(self, weights: ModelWeights, transform: Callable[[int, RetNetLayer], RetNetLayer] | None = None):
        self.weights, self.transform = weights, transform

    def __len__(self) -> int:
        return self.weights.cfg.n_layers

    def __iter__(self) -> Iterator[RetNetLayer]:
        for i in range(len(self)):
            layer = self.weights.layer(i)
            layer = self.transform(i, layer) if self.transform else layer
            yield layer
            # the loop that consumes us still names this layer while the next one is read: empty it first
            layer.to_empty(device="meta")


def _linear(weight: Tensor) -> nn.Linear:
    with torch.device("meta"):
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


class StreamedStack(DecoderStack):
    """The decoder body over a checkpoint whose layers stream (`LazyLayers`): `run` is the same one
    layer loop as every other form, each layer resident only while the loop is inside it, and the
    embedding and head only while `run` runs (the gate keeps two of these: plain and rounded)."""

    def __init__(self, weights: ModelWeights, outer_transform: Callable[[str, nn.Module], nn.Module] | None = None,
                 layer_transform: Callable[[int, RetNetLayer], RetNetLayer] | None = None):
        nn.Module.__init__(self)
        cfg = weights.cfg
        self.cfg, self.dropout_p = cfg, 0.0
        self.weights, self.outer_transform = weights, outer_transform or (lambda name, m: m)
        self.embed = self.embed_norm = self.norm = self.lm_head = None
        self.layers = LazyLayers(weights, layer_transform)  # type: ignore[assignment]  (not a ModuleList)
        self.register_buffer("log_gamma", log_decay(cfg), persistent=False)
        self.register_buffer("freqs", rotary_freqs(cfg), persistent=False)
        self.eval()

    def load_outer(self) -> None:
        cfg, fix = self.cfg, self.outer_transform
        outer = self.weights.outer()
        self.embed = fix("embed", nn.Embedding(cfg.vocab_size, cfg.d_model, _weight=outer["embed.weight"]))
        if cfg.embed_norm:
            self.embed_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.embed_norm.weight = nn.Parameter(outer["embed_norm.weight"], requires_grad=False)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.norm.weight = nn.Parameter(outer["norm.weight"], requires_grad=False)
        self.lm_head = fix("lm_head", _linear(outer["lm_head.weight"]))

    def run(self, input_ids, positions, core, past):
        self.load_outer()
        try:
            return super().run(input_ids, positions, core, past)
        finally:
            self.embed = self.embed_norm = self.norm = self.lm_head = None


def build_step(weights: ModelWeights, layer_transform: Callable[[int, RetNetLayer], RetNetLayer] | None = None):
    """The whole step module, built layer by layer: each layer is read (fp32), handed to `layer_transform`
    (the ExecuTorch export quantizes it there) and kept as that returns it, so the fp32 model never
    exists whole."""
    from ..core.model import RetNet
    from ..core.step import to_recurrent

    cfg = weights.cfg
    with torch.device("meta"):
        model = RetNet(cfg)
    outer = weights.outer()
    model.embed.weight = nn.Parameter(outer["embed.weight"], requires_grad=False)
    if cfg.embed_norm:
        model.embed_norm.weight = nn.Parameter(outer["embed_norm.weight"], requires_grad=False)
    model.norm.weight = nn.Parameter(outer["norm.weight"], requires_grad=False)
    model.lm_head.weight = (model.embed.weight if cfg.tie_embeddings else
                            nn.Parameter(outer["lm_head.weight"], requires_grad=False))
    model.log_gamma, model.freqs = log_decay(cfg), rotary_freqs(cfg)
    for i in range(cfg.n_layers):
        layer = weights.layer(i)
        model.layers[i] = layer_transform(i, layer) if layer_transform else layer
    return to_recurrent(model.eval())
