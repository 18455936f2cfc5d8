"""Which int4 layers hurt, whatever rounded them: each int4 linear's relative output error on calibration text,
computed from the weights the target actually wrote.

A calibrated method (gptq) measures this as it rounds (`gptq.QuantCodes.errors`). For a data-free method
(rtn, hqq) the integers come from the target's own quantizer (onnxruntime's MatMulNBits quantizer,
torchao), so the targets hand back what they wrote: `Captured`, the dequantized int4 weight per linear
(fp16 .npy files in the export's temporary directory, removed before the manifest), filled by the ONNX
quantizer from its MatMulNBits initializers and by the ExecuTorch one from torchao's tensors. Then one
layer-streamed fp32 pass over the calibration windows sums XᵀX per int4 linear and scores it:
||X ΔWᵀ||² / ||X Wᵀ||² (`gptq.output_errors`), beside symmetric round-to-nearest's on the same inputs, the
same columns the manifest's `quant_layers` holds for gptq.

Past `MAX_PARAMETERS` nothing is captured: the fp16 copy would be as large as an fp16 checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints.streaming import ModelWeights
from ..contract.quant import QuantPlan
from .gptq import output_errors, streamed_linears

CAPTURE_DIR = ".int4-weights"  # inside the export's temporary directory
MAX_PARAMETERS = 1_000_000_000
TOKENS = 2048  # 4 windows of 512: enough to rank the layers (gptq's own errors use its 16k tokens)


class Captured:
    """The int4 weight each target wrote, dequantized: [N, K] fp16 per linear module, one file each."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, module: str) -> Path:
        return self.directory / f"{module}.npy"

    def put(self, module: str, w: np.ndarray) -> None:
        np.save(self._path(module), np.asarray(w, dtype=np.float16))

    def get(self, module: str) -> torch.Tensor | None:
        p = self._path(module)
        return torch.from_numpy(np.load(p).astype(np.float32)) if p.is_file() else None


def matmulnbits_weight(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int,
                       block: int) -> np.ndarray:
    """MatMulNBits' 4-bit B [N, K / block, block / 2] (two values a byte, the first in the low nibble), its
    scales [N, K / block] and zero points (none: 8; uint8: two a byte; float: as they are) -> W [N, K]."""
    blocks = k // block
    q = np.empty((n, blocks, block), np.float32)
    q[..., 0::2], q[..., 1::2] = b & 0x0F, b >> 4
    if zero_points is None:
        zp = np.full((n, blocks), 8.0, np.float32)
    elif zero_points.dtype == np.uint8:
        packed = zero_points.reshape(n, -1)
        zp = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zp = zero_points.reshape(n, blocks).astype(np.float32)
    return ((q - zp[..., None]) * scales.reshape(n, blocks)[..., None]).reshape(n, k)


def layer_errors(weights: ModelWeights, plan: QuantPlan, captured: Captured, ids: np.ndarray,
                 log=lambda s: None) -> dict[str, tuple[float, float]]:
    """{int4 linear: (its relative output error, symmetric rtn's)} on calibration windows ids [W, T], for
    every captured linear; the checkpoint read one layer at a time, fp32 (the errors are of the weights,
    each layer fed the fp32 model's activations)."""
    int4 = set(plan.modules("int4"))
    errors: dict[str, tuple[float, float]] = {}

    def score(name: str, linear: nn.Linear, h: torch.Tensor) -> None:
        wq = captured.get(name)
        if wq is not None and tuple(wq.shape) == tuple(linear.weight.shape):
            errors[name] = output_errors(linear.weight, wq, h, plan.group_size)

    streamed_linears(weights, ids, int4, score)
    log(f"  per-layer int4 error measured on {len(errors)} of {len(int4)} int4 linears")
    return errors
