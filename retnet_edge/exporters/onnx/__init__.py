"""The ONNX target: graphs traced from the step and chunk modules, stamped out layer by layer, quantized
per the plan and sharing one weights file.

Modules, each public to the others: `trace` (torch.onnx tracing, node names, the graph table per
flavour, the step-graph guard), `fused` (the LinearAttention state update and its step core),
`quantize` (MatMulNBits / the int8 GEMM), `weights` (weights.bin in first-use order, graph metadata),
`genai` (onnxruntime-genai's I/O surgery and config files) and `stamp` (the export itself: a one-layer
template traced once, stamped per layer, each layer's weights streamed; registered as target "onnx").
"""
from __future__ import annotations

from . import stamp  # noqa: F401  (registers the "onnx" target)
from .stamp import export_onnx

__all__ = ["export_onnx"]
