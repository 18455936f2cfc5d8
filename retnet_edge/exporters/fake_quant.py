"""The quantization's own error, in eager PyTorch: a copy of the step module whose planned weights are
rounded the way the targets round them (symmetric; int8 per output channel to the target's range, int4
per group along the input), computed in fp32.

Why: how far a quantized artifact may drift from eager fp32 depends on the model. A trained model has
peaked logits and the fixed limits of `quant.TOLERANCES` fit it; a deep random-weight model (the presets
used to benchmark realistic sizes) has near-flat logits, where a healthy int8 export already disagrees
on most argmaxes and its KL passes the fixed limit. Measuring what the same rounding does in eager
PyTorch gives each model its own yardstick: a healthy artifact lands near it, a broken kernel, a
saturated int8 path or a lost state lands far beyond it.

The int4 rounding here is round-to-nearest whatever `plan.int4_method` is: the yardstick, not a replica.
A method exists to round better than rtn, and the gate allows an artifact KL_FACTOR (4) x the yardstick's
KL, so an hqq artifact is judged against a limit it beats with room (measured KL hqq / rtn: 0.7-1.0 on
the demo and the 12-layer model, benchmarks/results/int4_methods_*.json), while a broken kernel or a lost
state (10-100x) still fails. A replica would need the target's own quantizer here (onnxruntime's HQQ
and torchao's scale-only HQQ round differently), and a plan does not name its target.
"""
from __future__ import annotations

import copy

import torch

from ..contract.quant import INT8_QMAX_FULL, QuantPlan
from ..core.step import RetNetStep

INT4_QMAX = 7


def round_weight(w: torch.Tensor, precision: str, group_size: int, int8_qmax: int = 127,
                 int8_blocks: bool = False) -> torch.Tensor:
    """Symmetric round-to-nearest of w [out, in]: int8 per row (to ±int8_qmax, the target's range; with
    int8_blocks per `group_size` block of a row, as ONNX's GatherBlockQuantized), int4 per block."""
    qmax = INT4_QMAX if precision == "int4" else int8_qmax
    w = w.float()
    if (precision == "int4" or int8_blocks) and w.shape[1] % group_size == 0:
        g = w.reshape(w.shape[0], -1, group_size)
        scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
        return (torch.round(g / scale).clamp(-qmax - 1, qmax) * scale).reshape_as(w)
    scale = w.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return torch.round(w / scale).clamp(-qmax - 1, qmax) * scale


def _round_rows(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the linear's input rounded to 8 bits per row (symmetric; the ONNX int8 GEMM's
    run-time activation quantization, `onnx.int8_matmul_nodes`)."""
    x = args[0]
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    return (torch.round(x / scale) * scale, *args[1:])


def _round(module: torch.nn.Module, precision: str, plan: QuantPlan, name: str) -> None:
    """module's weight rounded per the plan (and its input, where the target's int8 GEMM rounds it); a plan
    carrying calibrated codes for the module (`exporters.gptq.QuantCodes`: `--quant auto` measuring gptq's
    rounding) gives their weight instead."""
    got = plan.codes.dequantized(name, 8 if precision == "int8" else 4) if plan.codes is not None else None
    if got is not None:
        w = got
    elif name == plan.embedding:  # a Gather, not the int8 GEMM: the full 8-bit range, per row or in blocks
        w = round_weight(module.weight, precision, plan.group_size, INT8_QMAX_FULL,
                         int8_blocks=plan.embedding_int8_blocks)
    else:
        w = round_weight(module.weight, precision, plan.group_size, plan.int8_qmax)
    module.weight = torch.nn.Parameter(w, requires_grad=False)
    if precision == "int8" and plan.int8_row_activations and isinstance(module, torch.nn.Linear):
        module.register_forward_pre_hook(_round_rows)


def fake_quantize(step: RetNetStep, plan: QuantPlan) -> RetNetStep:
    """A copy of `step` with every module the plan quantizes holding its rounded weights (fp32 compute).

    Tied weights are untied where only one side is quantized (lm_head int8, embedding fp32)."""
    q = copy.deepcopy(step)
    with torch.no_grad():
        for name, precision in plan.precision.items():
            if precision == "fp32":
                continue
            _round(q.get_submodule(name), precision, plan, name)
    return q


def rounding_transforms(plan: QuantPlan):
    """(outer, layer) transforms for `streaming.StreamedStack`: the same rounding as `fake_quantize`, applied
    to each module as it is loaded (the layer-streamed gate never holds a second copy of the model)."""
    def outer(name: str, module: torch.nn.Module) -> torch.nn.Module:
        precision = plan.precision.get(name, "fp32")
        if precision != "fp32":
            with torch.no_grad():
                _round(module, precision, plan, name)
        return module

    def layer(i: int, module: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            for name, sub in module.named_modules():
                precision = plan.precision.get(f"layers.{i}.{name}", "fp32")
                if precision != "fp32":
                    _round(sub, precision, plan, f"layers.{i}.{name}")
        return module

    return outer, layer
