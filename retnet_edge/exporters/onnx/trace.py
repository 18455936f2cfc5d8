"""Tracing the step and chunk modules to ONNX, and what a traced graph must satisfy.

`trace_graph` is torch.onnx's dynamo export with the contract's names (batch, and for the chunk graph the
sequence, dynamic); `name_nodes` names each node after the module it came from, so a quantizer or the
stamper finds a layer's nodes by name; `graph_plan` is the table of graphs each flavour writes.
"""
from __future__ import annotations

import logging
import warnings

import onnx
import torch

from ...contract import (
    ONNX_PREFILL_FILE,
    ONNX_STEP_FILE,
    ONNX_STEP_FUSED_FILE,
    STANDARD_STATE_OP_OPSET,
    TARGET_FLAVORS,
    io_names,
)
from ...contract.quant import QuantConfig
from ...core.step import RetNetStep, to_prefill
from ...errors import ConfigError, ExportError
from .fused import FusedStepCore, linear_attention, standard_op_available, to_standard_op

OPSET = 21  # GatherBlockQuantized (quantized embedding) needs 21
FORBIDDEN_STEP_OPS = {"Loop", "If", "Scan", "Range", "NonZero", "Unique", "SequenceConstruct"}
ONNX_FLAVORS = TARGET_FLAVORS["onnx"]
STEP_KINDS = ("step", "step-fused")


def trace_graph(module: torch.nn.Module, n_layers: int, state: tuple, seq_dynamic: bool,
                standard_op: bool | None = None) -> onnx.ModelProto:
    """torch.onnx dynamo export with the contract's names; batch (and sequence) dynamic. standard_op: the
    fused state update as ai.onnx LinearAttention (opset 27) or com.microsoft's; None: `standard_op_available`."""
    B = len(state[0])
    T = 3 if seq_dynamic else 1
    ids = torch.zeros(B, T, dtype=torch.long)
    args = (ids, torch.arange(T).expand(B, T).contiguous(), *state)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tok = {0: batch, 1: torch.export.Dim("sequence", min=1, max=8192)} if seq_dynamic else {0: batch}
    inputs, outputs = io_names(n_layers)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=inputs,
                                 output_names=outputs, dynamic_shapes=(tok, tok, tuple({0: batch} for _ in state)),
                                 custom_translation_table={torch.ops.retnet_edge.gated_state_step.default:
                                                           linear_attention},
                                 verbose=False)
    model = prog.model_proto
    if standard_op_available() if standard_op is None else standard_op:
        to_standard_op(model)
    return model


def resolve_state_op(state_op: str, log=lambda s: None) -> bool:
    """--state-op as "write the ai.onnx op": auto follows the installed onnxruntime's kernel registry;
    standard needs an onnx that defines opset 27's LinearAttention (an onnxruntime without its kernel runs
    the op's function body, slower: said on the log)."""
    if state_op == "auto":
        return standard_op_available()
    if state_op == "contrib":
        return False
    try:
        onnx.defs.get_schema("LinearAttention", STANDARD_STATE_OP_OPSET, "")
    except onnx.defs.SchemaError as exc:
        raise ConfigError(f"--state-op standard needs onnx >= 1.23 (opset {STANDARD_STATE_OP_OPSET}'s LinearAttention); "
                          f"this is onnx {onnx.__version__}") from exc
    if not standard_op_available():
        log("  --state-op standard: the installed onnxruntime has no kernel for ai.onnx LinearAttention and runs "
            "its function body (a loop over the sequence), slower than the com.microsoft kernel; for runtimes "
            "that implement opset 27")
    return True


def name_nodes(model: onnx.ModelProto) -> None:
    """Node names from the exporter's module namespace, by the innermost module: /model/layers.0.retention.q_proj/MatMul,
    /model/layers.0/Mul_3 (an op of the layer itself), /model/lm_head/MatMul."""
    seen: dict[str, int] = {}
    for node in model.graph.node:
        ns = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        path = [seg.split(":")[0].strip() for seg in ns.split("/")[1:-1]]
        inner = next((p for p in reversed(path) if p), "")
        base = "/model/" + (f"{inner}/" if inner else "") + node.op_type
        seen[base] = seen.get(base, -1) + 1
        node.name = base if seen[base] == 0 else f"{base}_{seen[base]}"
        del node.metadata_props[:]  # the exporter's FX provenance: now in the name, and most of the file


def module_of(node_name: str) -> str:
    """The fqn of the module a node came from: its innermost scope (see name_nodes).

    `/model/layers.0.ffn.fc1/MatMul` -> `layers.0.ffn.fc1`; `/model/lm_head/MatMul_Q8` -> `lm_head`.
    """
    return node_name.rsplit("/", 2)[-2]


def _batch_only(dim: str) -> bool:
    """True for a symbolic dim built from `batch` alone (e.g. `6*batch`), never from the sequence."""
    return set(dim.replace("batch", "")) <= set("0123456789*+-() ")


def position_dependent_nodes(model: onnx.ModelProto) -> list[str]:
    """Step-graph guard: control flow / range ops, or any tensor dim other than a number or `batch`."""
    bad = [f"{n.name} ({n.op_type})" for n in model.graph.node if n.op_type in FORBIDDEN_STEP_OPS]
    for vi in [*model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if any(d.dim_param and not _batch_only(d.dim_param) for d in dims):
            bad.append(f"{vi.name} (shape {[d.dim_param or d.dim_value for d in dims]})")
    return bad


def graph_plan(flavor: str) -> dict[str, tuple[str, bool]]:
    """The graphs a flavour writes: {file: (kind, dynamic sequence)} (both the traced and the streamed export)."""
    if flavor not in ONNX_FLAVORS:
        raise ExportError(f"unknown ONNX flavor {flavor!r}; expected one of {', '.join(ONNX_FLAVORS)}")
    if flavor == "genai":
        return {ONNX_STEP_FILE: ("genai", True)}
    return {ONNX_STEP_FILE: ("step", False), ONNX_STEP_FUSED_FILE: ("step-fused", False),
            ONNX_PREFILL_FILE: ("prefill", True)}


def check_prefill_weights(qc: QuantConfig, graphs: dict[str, tuple[str, bool]]) -> None:
    """--prefill-weights int8 needs a prompt graph of its own (the genai flavour decodes and prompts
    through one graph)."""
    if qc.prefill_weights != "same" and not any(kind == "prefill" for kind, _ in graphs.values()):
        raise ConfigError("--prefill-weights int8 needs the standard flavour's separate prompt graph (prefill.onnx)")


def graph_module(kind: str, step: RetNetStep) -> torch.nn.Module:
    """The module a graph kind is traced from (the same modules and tensors for every kind)."""
    if kind == "step-fused":
        return step.with_core(FusedStepCore)  # `small`, 12 layers' state update at 1 thread: 3.9 vs 8.7 ms (Xeon)
    return step if kind == "step" else to_prefill(step)


