"""Quantization recipes as data: one config per export, tolerances beside each scheme.

Every scheme keeps the recurrent state, the decay, the norms and the state products (activation x
activation) in fp32; only weight matrices (and optionally the embedding) are quantized. A QuantConfig
resolves once into a `QuantPlan` — a precision per module name (torchao's FqnToConfig idea) — and each
backend turns the plan into its own library calls (onnxruntime.quantization, torchao).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import ConfigError


class QuantScheme(str, Enum):
    FP32 = "fp32"  # no quantization: the checkpoint's weights in fp32
    INT8 = "int8"  # 8-bit weights per output channel
    INT4 = "int4"  # 4-bit weights in groups of `group_size` along the input (the head at int8 unless asked)

    @classmethod
    def parse(cls, value: str) -> "QuantScheme":
        try:
            return cls(value)
        except ValueError as exc:
            raise ConfigError(f"unknown quant mode {value!r}; expected one of {', '.join(s.value for s in cls)}") from exc


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail limits of an artifact against eager fp32 over teacher-forced steps."""

    max_rel: float | None  # max |Δlogits| / max |logits|; only meaningful unquantized
    min_top1: float  # argmax agreement with eager fp32
    max_kl: float  # mean KL(eager || artifact) per token, nats


# fp32 must be the same function (float rounding only: measured max rel 1.2e-6 on the demo, both backends).
# The quantized limits leave margin over what the demo model measured (64 teacher-forced steps):
#   int8  onnxruntime (7-bit weights per channel, 8-bit activations per row): top-1 0.97-0.98, KL 1.5e-3
#         (blockwise 8-bit MatMulNBits before it: 0.984, 3e-4);  ExecuTorch 8da8w (per token): 0.938, 1.1e-2
#   int4  onnxruntime (int8 head): top-1 0.88-0.90, KL 2-3e-2;  ExecuTorch 8da4w (int8 head): 0.83, 2.6e-2
# so a healthy export passes, while a broken kernel (int8 that saturates on AVX2 without VNNI: top-1 0.69
# in the reference notes) or a lost state (top-1 near 0) fails. Top-1 over 64 tokens moves in steps of
# 1/64 and flips on near-ties (ExecuTorch 8da8w gave 0.875 over 32 steps, 0.938 over 64), so KL is the
# primary limit and top-1 a coarse one.
TOLERANCES: dict[QuantScheme, Tolerance] = {
    QuantScheme.FP32: Tolerance(max_rel=1e-5, min_top1=1.0, max_kl=1e-6),  # max_rel floor: see validate.NOISE_FACTOR
    QuantScheme.INT8: Tolerance(max_rel=None, min_top1=0.85, max_kl=0.03),
    QuantScheme.INT4: Tolerance(max_rel=None, min_top1=0.75, max_kl=0.10),
}


# "int8": an int4 artifact's prompt graph (ONNX prefill.onnx) reads int8 per-channel copies of the int4
# weights, so prompts run through onnxruntime's int8 GEMM (AMX / VNNI) instead of MatMulNBits: `small`
# prompt 512 tokens 2.28 -> ~1.05 s on the 2-core Xeon, for a weights.bin ~1.7x larger. Decode is unchanged.
PREFILL_WEIGHTS = ("same", "int8")

# How int4 weights are rounded, each through the library the target already uses (docs/quantization.md):
#   rtn  round to nearest per group, symmetric: onnxruntime's MatMulNBits default quantizer; torchao's affine
#        8da4w. What every int4 artifact before this field was (a manifest without it loads as rtn).
#   hqq  half-quadratic quantization (no calibration data): onnxruntime's HQQWeightOnlyQuantConfig (asymmetric,
#        fp32 zero points: weights.bin +20 % at group 32, and onnxruntime 1.32 dequantizes such MatMulNBits
#        weights on every call: one matmul at M = 1 ~100x slower, demo decode 11-34x); torchao's scale-only
#        HQQ for 8da4w (`intx_choose_qparams_algorithm`, symmetric: the same bytes and kernel as rtn).
#   gptq GPTQ with calibration text (`exporters/gptq.py`): integers and symmetric scales chosen layer by layer
#        so each layer's output on calibration activations stays close; written as they are by both targets
#        (MatMulNBits without zero points, torchao scale-only intx: rtn's bytes and kernels). The embedding is
#        not a matmul: under gptq it is rounded data-free (ONNX rtn, ExecuTorch hqq).
# Measured on the demo and the 12-layer model, both targets: benchmarks/results/int4_methods_*.json.
INT4_METHODS = ("rtn", "hqq", "gptq")
CALIBRATED_METHODS = ("gptq",)  # methods that read calibration text (`--calibration`)
# `--int4-method auto` (the CLI's default): each target's best method at the same artifact size, measured on
# held-out text against fp32 (benchmarks/results/int4_methods_*.json, docs/quantization.md): gptq on both
# (rtn's bytes and kernels; ExecuTorch hqq was 0.86-0.92x rtn's KL, ONNX hqq bigger and 11x slower to decode).
DEFAULT_INT4_METHODS = {"onnx": "gptq", "executorch": "gptq"}
# ... when there is calibration text (`--calibration`, or heldout.txt beside the model). Without it gptq would
# sample the model's own text, and a RetNet state read and written per sampled token per sequence made that
# ~8 minutes at `small` (5x the rtn export): auto takes the best data-free method then, and says so.
DEFAULT_DATA_FREE_INT4_METHODS = {"onnx": "rtn", "executorch": "hqq"}


def check_int4_method(method: str) -> None:
    if method not in INT4_METHODS:
        raise ConfigError(f"unknown int4 method {method!r}; expected one of {', '.join(INT4_METHODS)}")


# What a method cannot round on a target: onnxruntime's HQQ quantizer has no Gather (the embedding), and
# quietly writing that one rtn would be a silent fallback. Checked where the export request is built.
INT4_METHOD_CANNOT = {("onnx", "hqq"): "onnxruntime's HQQ quantizer has no Gather"}


def check_int4_method_target(qc: QuantConfig, target: str) -> None:
    """Refuse a method x target that cannot round what qc asks at int4 (INT4_METHOD_CANNOT)."""
    why = INT4_METHOD_CANNOT.get((target, qc.int4_method))
    if why and qc.embedding == "int4":
        raise ConfigError(f"--int4-method {qc.int4_method} cannot quantize an int4 embedding for the {target} target "
                          f"({why}); use --embedding int8 or fp32, or --int4-method rtn")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; defaults are the measured best trade-off."""

    scheme: QuantScheme = QuantScheme.FP32
    group_size: int = 32  # int4 block size along the input dim
    lm_head: str = "auto"  # auto (int8 under int4, else the scheme) | fp32 | int8 | int4
    embedding: str = "fp32"  # fp32 | int8 | int4
    prefill_weights: str = "same"  # same | int8: the prompt graph reads int8 copies of int4 weights (ONNX)
    int4_method: str = "rtn"  # how int4 weights are rounded (INT4_METHODS); the CLI's default is measured
    int8_modules: str = ""  # under int4: linears kept at int8, comma-separated (`--quant auto` writes it)
    max_kl: float = 0.0  # `--quant auto`'s bound on the eager KL that chose int8_modules (0: not auto)
    auto_kl: float = 0.0  # `--quant auto`: the chosen mix's eager KL as measured on the calibration text
    calibration: str = ""  # the text `--quant auto` or a calibrated method measured on (source, token count)
    int4_params: str = ""  # a calibrated method's parameters as it ran (gptq: damp, block, scale search)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", QuantScheme.parse(self.scheme))
        check_int4_method(self.int4_method)
        if not (isinstance(self.max_kl, (int, float)) and math.isfinite(self.max_kl) and self.max_kl >= 0):
            raise ConfigError(f"max_kl must be a non-negative number, got {self.max_kl}")
        object.__setattr__(self, "max_kl", float(self.max_kl))
        if not (isinstance(self.auto_kl, (int, float)) and math.isfinite(self.auto_kl) and self.auto_kl >= 0):
            raise ConfigError(f"auto_kl must be a non-negative number, got {self.auto_kl}")
        object.__setattr__(self, "auto_kl", float(self.auto_kl))
        if self.int8_modules and self.scheme != QuantScheme.INT4:
            raise ConfigError(f"int8_modules is for int4 (the {self.scheme.value} body has one precision)")
        if self.lm_head not in ("auto", "fp32", "int8", "int4"):
            raise ConfigError(f"unknown lm_head precision {self.lm_head!r}; expected auto, fp32, int8 or int4")
        if self.embedding not in ("fp32", "int8", "int4"):
            raise ConfigError(f"unknown embedding precision {self.embedding!r}; expected fp32, int8 or int4")
        if self.prefill_weights not in PREFILL_WEIGHTS:
            raise ConfigError(f"unknown prefill weights {self.prefill_weights!r}; expected {' or '.join(PREFILL_WEIGHTS)}")
        if self.prefill_weights == "int8" and self.scheme != QuantScheme.INT4:
            raise ConfigError(f"--prefill-weights int8 is for --quant int4 (the {self.scheme.value} prompt graph "
                              "reads the decode weights)")
        if self.group_size < 16 or self.group_size > 4096 or self.group_size & (self.group_size - 1):
            raise ConfigError(f"group size must be a power of two from 16 to 4096, got {self.group_size}")

    @property
    def head_precision(self) -> str:
        if self.lm_head != "auto":
            return self.lm_head
        return "int8" if self.scheme == QuantScheme.INT4 else self.scheme.value

    @property
    def tolerance(self) -> Tolerance:
        """The scheme's limits; an fp32 body with a quantized head or embedding is judged as int8."""
        if self.scheme == QuantScheme.FP32 and (self.head_precision != "fp32" or self.embedding != "fp32"):
            return TOLERANCES[QuantScheme.INT8]
        return TOLERANCES[self.scheme]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scheme"] = self.scheme.value
        d["lm_head"] = self.head_precision
        return d


# int8 weights' symmetric range per target. 127 is the full range. ONNX's int8 GEMM (DynamicQuantizeMatMul:
# uint8 activations x int8 weights) sums pairs of products in 16 bits on x86 AVX2 without VNNI (vpmaddubsw),
# which saturates for |w| > 64 (2 x 255 x 64 = 32640 < 2^15): an artifact must be right on every CPU it
# may meet, so ONNX int8 weights use 7 bits (onnxruntime.quantization's `reduce_range`).
INT8_QMAX_FULL, INT8_QMAX_REDUCED = 127, 64


@dataclass(frozen=True)
class QuantPlan:
    """The precision of every quantizable module (fqn -> fp32 | int8 | int4), resolved once per export."""

    precision: dict[str, str]
    group_size: int
    fallbacks: tuple[str, ...] = ()  # int4 modules planned at int8: in_features % group_size != 0
    embedding: str = "embed"  # the fqn of the embedding (a Gather, not a MatMul)
    int8_qmax: int = INT8_QMAX_FULL  # int8 linears round to [-qmax, qmax] per output channel (the target's)
    int8_row_activations: bool = False  # the target's int8 linears also round their inputs, 8 bits per row
    embedding_int8_blocks: bool = False  # the target's int8 embedding: a scale per group_size of a row (else per row)
    prefill_int8: bool = False  # the prompt graph's int4 linears are int8 (QuantConfig.prefill_weights)
    int4_method: str = "rtn"  # QuantConfig.int4_method: how each target rounds its int4 modules
    # a calibrated method's chosen integers and scales per module (`exporters.gptq.QuantCodes`), set by the
    # export pipeline before the target runs; the targets write them instead of rounding again
    codes: Any = field(default=None, compare=False, repr=False)
    # where a target puts the int4 weights it wrote, dequantized (`exporters.layer_errors.Captured`), so a
    # data-free method's per-layer error is measured on them; None: nothing captured
    capture: Any = field(default=None, compare=False, repr=False)

    def modules(self, precision: str, kind: str = "linear") -> list[str]:
        """Module names planned at `precision`; kind "linear" or "embedding"."""
        return [n for n, p in self.precision.items() if p == precision and (n == self.embedding) == (kind == "embedding")]

    @property
    def quantizes_anything(self) -> bool:
        return any(p != "fp32" for p in self.precision.values())

    def for_graph(self, kind: str) -> "QuantPlan":
        """The plan of one graph kind: under prefill_int8 the prompt graph ("prefill") reads int8 copies of
        the int4 linears (the embedding keeps its precision: a Gather reads one row per token)."""
        if kind != "prefill" or not self.prefill_int8:
            return self
        precision = {n: "int8" if p == "int4" and n != self.embedding else p for n, p in self.precision.items()}
        return dataclasses.replace(self, precision=precision, prefill_int8=False)


def plan_quantization(qc: QuantConfig, linears: dict[str, int], embedding: str = "embed") -> QuantPlan:
    """Resolve qc over a model's linears ({fqn: in_features}, "lm_head" among them) and its embedding.

    The body gets the scheme (int8 for the linears `qc.int8_modules` names), the head `qc.head_precision`, the
    embedding `qc.embedding`. Group-wise int4
    needs in_features divisible by the group; such a linear falls back to int8 (per channel), and the plan
    says which, so both backends make the same choice.
    """
    precision, fallbacks = {}, []
    int8 = set(filter(None, qc.int8_modules.split(",")))
    unknown = sorted(int8 - set(linears))
    if unknown:
        raise ConfigError(f"int8_modules names modules that are not linears of this model: {', '.join(unknown[:4])}")
    for name, in_features in linears.items():
        p = qc.head_precision if name == "lm_head" else "int8" if name in int8 else qc.scheme.value
        if p == "int4" and in_features % qc.group_size:
            p = "int8"
            fallbacks.append(name)
        precision[name] = p
    precision[embedding] = qc.embedding
    return QuantPlan(precision, qc.group_size, tuple(fallbacks), embedding,
                     prefill_int8=qc.prefill_weights == "int8", int4_method=qc.int4_method)
