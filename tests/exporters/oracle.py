"""The oracles of the exports: the whole model traced or lowered at once (the product path before issue 25).

The product exports layer by layer (`exporters/onnx/stamp.py`, `exporters/executorch.py`); these start
from the whole fp32 step module with the same public pieces and must give the same artifact (ONNX:
weights.bin byte-identical; ExecuTorch: the same logits). They live in tests because they need the
whole model in memory (~3x the fp32 size).
"""
from __future__ import annotations

from pathlib import Path

import onnx

from retnet_edge.contract import ONNX_WEIGHTS_FILE
from retnet_edge.contract.quant import QuantConfig, QuantPlan
from retnet_edge.core.step import RetNetStep
from retnet_edge.errors import ExportError
from retnet_edge.exporters.onnx.genai import to_genai_io, write_genai_files
from retnet_edge.exporters.onnx.logits import add_logits_to_keep
from retnet_edge.exporters.onnx.quantize import quantize_onnx
from retnet_edge.exporters.onnx.trace import (
    STEP_KINDS,
    check_prefill_weights,
    graph_module,
    graph_plan,
    name_nodes,
    position_dependent_nodes,
    trace_graph,
)
from retnet_edge.exporters.onnx.weights import save_shared, set_metadata


def export_onnx_whole(step: RetNetStep, qc: QuantConfig, plan: QuantPlan, out: Path, tokenizer: str | None = None,
                      log=lambda s: None, flavor: str = "standard") -> list[str]:
    """Write the graphs into `out`; returns the file names.

    standard: model.onnx (static step) + prefill.onnx (chunk graph), the documented contract, and
    model_fused.onnx (the step with onnxruntime's LinearAttention, which runners use at 1 thread).
    genai: one model.onnx (the chunk graph, any length) with onnxruntime-genai's I/O names, plus
    genai_config.json and tokenizer_config.json (see exporters/genai.py).
    """
    graphs = graph_plan(flavor)
    check_prefill_weights(qc, graphs)
    cfg = step.cfg
    state = step.init_state(2)
    protos: dict[str, onnx.ModelProto] = {}
    for fname, (graph, dynamic) in graphs.items():
        module = graph_module(graph, step)
        log(f"  tracing {graph} graph ...")
        try:
            model = trace_graph(module, cfg.n_layers, state, dynamic)
        except Exception as exc:  # the exporter raises many types; one clear message
            raise ExportError(f"torch.onnx export of the {graph} graph failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}") from exc
        name_nodes(model)
        if graph in STEP_KINDS:
            bad = position_dependent_nodes(model)
            if bad:
                raise ExportError(f"the step graph has position-dependent nodes: {', '.join(bad[:8])}")
        gplan = plan.for_graph(graph)
        if gplan.quantizes_anything:
            log(f"  quantizing {graph} graph ({qc.scheme.value}, lm_head {qc.head_precision}, embedding "
                f"{qc.embedding}{', int8 weights' if gplan is not plan else ''}) ...")
            model = quantize_onnx(model, gplan)
        if graph == "prefill":
            add_logits_to_keep(model)
        if graph == "genai":
            to_genai_io(model, cfg.n_layers)
        set_metadata(model, cfg, qc, graph, tokenizer)
        protos[fname] = model
    save_shared(protos, out)
    extra = write_genai_files(out, cfg, tokenizer) if flavor == "genai" else []
    return [*graphs, ONNX_WEIGHTS_FILE, *extra]


def export_executorch_whole(step: RetNetStep, qc: QuantConfig, plan: QuantPlan, out: Path, flavor: str = "runner") -> list[str]:
    """The ExecuTorch program from the whole step module, quantized at once."""
    from retnet_edge.exporters.executorch import DEFAULT_MAX_CONTEXT, export_program, quantize_step

    return export_program(lambda: quantize_step(step, plan) if plan.quantizes_anything else step, qc, plan, out,
                          lambda s: None, flavor, DEFAULT_MAX_CONTEXT)
