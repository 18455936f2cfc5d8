"""Export targets as registry entries, and the per-module quantization plan every target reads.

A target is an export function `(weights: ModelWeights, qc, plan, out_dir, tokenizer_name, log, **options)
-> [file names]` that reads the checkpoint one layer at a time (memory independent of the depth),
registered with `@register_target(name, option=choices)`; it is validated through the runtime of the
same name (`runtimes.RUNTIMES`). Its options (the flavours) are declared with it, so the CLI and the
export request offer and check them from here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..base.registry import Registry
from ..contract.quant import INT8_QMAX_FULL, QuantConfig, QuantPlan, plan_quantization
from ..core.config import RetNetConfig
from ..core.model import DecoderStack, RetNet
from ..errors import ConfigError

ExportFn = Callable[..., list[str]]


@dataclass(frozen=True)
class Target:
    name: str
    export: ExportFn
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # option -> choices, first the default
    int8_qmax: int = INT8_QMAX_FULL  # the range its int8 linears round to (quant.INT8_QMAX_*)
    int8_row_activations: bool = False  # its int8 linears quantize their inputs per row (8 bits)
    prefill_weights: tuple[str, ...] = ("same",)  # the QuantConfig.prefill_weights it can write
    int4_negative_scales: bool = False  # its int4 kernel takes a negative group scale (calibrated codes may use it)
    embedding_int8_blocks: bool = False  # its int8 embedding has a scale per group of a row, not one per row

    def check(self, qc: QuantConfig) -> None:
        if qc.prefill_weights not in self.prefill_weights:
            raise ConfigError(f"--prefill-weights {qc.prefill_weights} is not offered by the {self.name} target "
                              f"(it has no separate prompt weights); expected {' or '.join(self.prefill_weights)}")

    def plan(self, step: DecoderStack, qc: QuantConfig) -> QuantPlan:
        return self._rounding(quant_plan(step, qc))

    def config_plan(self, cfg: RetNetConfig, qc: QuantConfig) -> QuantPlan:
        return self._rounding(config_quant_plan(cfg, qc))

    def _rounding(self, plan: QuantPlan) -> QuantPlan:
        """The plan with this target's int8 rounding, which the gate's rounded reference mirrors."""
        return dataclasses.replace(plan, int8_qmax=self.int8_qmax, int8_row_activations=self.int8_row_activations,
                                   embedding_int8_blocks=self.embedding_int8_blocks)


TARGETS: Registry[Target] = Registry("export target", ConfigError)


def register_target(name: str, int8_qmax: int = INT8_QMAX_FULL, int8_row_activations: bool = False,
                    prefill_weights: tuple[str, ...] = ("same",), int4_negative_scales: bool = False,
                    embedding_int8_blocks: bool = False, **options: tuple[str, ...]) -> Callable[[ExportFn], ExportFn]:
    """Decorator: register an export function as target `name` with its options (and its int8 rounding,
    which the gate's rounded reference mirrors)."""
    def add(fn: ExportFn) -> ExportFn:
        TARGETS.register(name)(Target(name, fn, options, int8_qmax, int8_row_activations, prefill_weights,
                                      int4_negative_scales, embedding_int8_blocks))
        return fn

    return add


def quant_plan(step: DecoderStack, qc: QuantConfig) -> QuantPlan:
    """qc resolved over the step's linears (module name -> precision), the same for every target (how int8
    rounds is the target's: `Target.plan`)."""
    linears = {n: m.in_features for n, m in step.named_modules() if isinstance(m, nn.Linear)}
    return plan_quantization(qc, linears, embedding="embed")


def config_quant_plan(cfg: RetNetConfig, qc: QuantConfig) -> QuantPlan:
    """The same plan from a config alone (a model on the meta device: nothing allocated)."""
    import torch

    with torch.device("meta"):
        return quant_plan(RetNet(cfg), qc)
