"""The single-step rewrite: one token + position + state in, logits + new state out (paper eq. 6).

`RetNetStep` is the graph every exporter starts from. Its state is explicit and functional —
`forward(input_ids, position_ids, *past) -> (logits, *present)` — zero-initialised, so there is no
first-step branch, and nothing in it grows with the position: constants are precomputed buffers and
every op has a static shape. It is the model's decoder body (`DecoderStack.run`) with the step core;
what the rewrite adds is export-friendliness: torchscale's interleaved rotary becomes the half-split
form by permuting W_q/W_k rows offline (exact: q·k is invariant under a shared permutation), so the
graph has no gather, and γ is a precomputed buffer. `RetNetPrefill` is the same body with one chunk of
the chunkwise form, over the step's own modules.
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from .model import DecoderStack, RetNet, RetNetLayer
from .retention import ChunkCore, StepCore


def _permute_rows(linear: nn.Linear, n_heads: int, perm: Tensor) -> None:
    """Reorder each head's output rows of a [H*Dk, D] projection by perm (new Parameter, source untouched)."""
    W = linear.weight.detach()
    D_out, D_in = W.shape
    W = W.view(n_heads, D_out // n_heads, D_in)[:, perm].reshape(D_out, D_in)
    linear.weight = nn.Parameter(W.clone())


def rewrite_layer(layer: RetNetLayer, n_heads: int) -> RetNetLayer:
    """The step rewrite of one layer, in place: interleaved rotary becomes half-split by permuting W_q/W_k
    rows once (the gather leaves the graph). The streamed export applies it to each layer as it is read."""
    msr = layer.retention
    if msr.half_split is not None:
        _permute_rows(msr.q_proj, n_heads, msr.half_split)
        _permute_rows(msr.k_proj, n_heads, msr.half_split)
        msr.half_split = None
    return layer


class RetNetStep(DecoderStack):
    """Recurrent-only step module over a RetNet's weights (shared, not copied, except permuted W_q/W_k)."""

    def __init__(self, model: RetNet):
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.adopt(copy.deepcopy(model, memo=shared))  # fresh modules, same tensors
        cfg = self.cfg
        for layer in self.layers:
            rewrite_layer(layer, cfg.n_heads)
        self.register_buffer("gamma", self.log_gamma.exp().view(1, cfg.n_heads, 1, 1), persistent=False)

    def init_state(self, batch_size: int = 1) -> tuple[Tensor, ...]:  # type: ignore[override]
        """Zero state: n_layers fp32 tensors [B, H, Dk, Dv]."""
        return tuple(super().init_state(batch_size))

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        """input_ids, position_ids [B,1] int64; past L x [B,H,Dk,Dv] -> (logits [B,1,V], *present)."""
        return self.step_from(input_ids, position_ids, past)

    step_core: type[StepCore] = StepCore  # eq. 6's core; a target passes its own in (`with_core`)

    def with_core(self, core: type[StepCore]) -> "RetNetStep":
        """The same step (same modules and tensors: a shallow copy) with another step core: a target's
        own state layout or fused op (exporters/onnx/fused.py, exporters/executorch.py). The paper's math
        stays in `StepCore`; what a target changes lives beside its exporter."""
        other = copy.copy(self)
        other.step_core = core
        return other

    def step_from(self, input_ids: Tensor, position_ids: Tensor, past, keep: Tensor | None = None) -> tuple[Tensor, ...]:
        """forward, with `keep` (a [1,1,1,1] 0/1 tensor) scaling the decay: keep = 0 starts a new sequence
        whatever `past` holds, inside the pass over S the decay makes anyway (S·(γ·keep) + kᵀv). The
        ExecuTorch runner program resets this way; a separate S·keep pass cost 2 MB read + written per
        layer per token on `small`."""
        gamma = self.gamma if keep is None else self.gamma * keep
        core = self.step_core(gamma, self.log_gamma, position_ids, self.cfg.normalize)
        logits, present = self.run(input_ids, position_ids, core, past)
        return (logits, *present)


def to_recurrent(model: RetNet) -> RetNetStep:
    """Rewrite a RetNet into its single-step recurrent module (weights shared, eval mode)."""
    return RetNetStep(model).eval()


class RetNetPrefill(DecoderStack):
    """One chunk of the chunkwise form over a RetNetStep's weights: the prompt graph of every exporter.

    forward(input_ids[B,T], position_ids[B,T], *past) -> (logits[B,T,V], *present), positions consecutive.
    T is dynamic; work is O(T²) inside the chunk, so runners feed long prompts chunk by chunk (paper eq. 7).
    """

    def __init__(self, step: RetNetStep):
        self.adopt(step)  # the step's own modules (no copy), under the same names: node names match

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        core = ChunkCore(self.log_gamma, position_ids, self.cfg.normalize, chunk_size=None)
        logits, present = self.run(input_ids, position_ids, core, past)
        return (logits, *present)


def to_prefill(step: RetNetStep) -> RetNetPrefill:
    """The chunk (prompt) graph sharing a step module's weights."""
    return RetNetPrefill(step).eval()

