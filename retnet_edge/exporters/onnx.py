"""ONNX export: a static step graph (model.onnx) and a dynamic-length chunk graph (prefill.onnx).

I/O contract (`contract.py`, README): inputs `input_ids`, `position_ids` int64 [batch, sequence],
`past.{i}.recurrent` fp32 [batch, H, d_k, d_v]; outputs `logits` fp32 [batch, sequence, vocab],
`present.{i}.recurrent`. Weights are quantized per the QuantPlan: int4 with onnxruntime.quantization's
MatMulNBits (weight-only, blockwise, symmetric), int8 as MatMulInteger (7-bit per-channel weights,
activations quantized per row at run time: `int8_matmul_nodes`); activation x activation MatMuls (the state products) are not in the plan, so they stay fp32.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from .. import __version__
from ..config import RetNetConfig
from ..contract import (FUSED_STATE_OP, ONNX_PREFILL_FILE, ONNX_STEP_FILE, ONNX_STEP_FUSED_FILE, ONNX_WEIGHTS_FILE,
                        STATE_LAYOUT, io_names)
from ..errors import ConfigError, ExportError
from ..quant import INT8_QMAX_REDUCED, QuantConfig, QuantPlan
from ..step import RetNetStep, to_fused_step, to_prefill
from .genai import to_genai_io, write_genai_files
from .target import register_target

OPSET = 21  # GatherBlockQuantized (quantized embedding) needs 21
SHARE_MIN_BYTES = 1024  # smaller initializers stay inline
FORBIDDEN_STEP_OPS = {"Loop", "If", "Scan", "Range", "NonZero", "Unique", "SequenceConstruct"}


def _linear_attention(q, k, v, state, log_decay, heads: int):
    """retention.gated_state_step as onnxruntime's contrib op: one node reads S once and writes S' once."""
    import onnxscript  # with torch.onnx's exporter, which needs it anyway

    _register_fused_state_schema()
    op = onnxscript.values.Opset(FUSED_STATE_OP[0], 1)[FUSED_STATE_OP[1]]
    return op(q, k, v, state, log_decay, q_num_heads=heads, kv_num_heads=heads, scale=1.0, update_rule="gated")


def _register_fused_state_schema() -> None:
    """onnx's schema registry lacks onnxruntime's contrib ops; the exporter needs the signature of the one
    we emit (the part of it we use: the gated update, no beta, no state window)."""
    domain, name = FUSED_STATE_OP
    try:
        onnx.defs.get_schema(name, 1, domain)
        return
    except onnx.defs.SchemaError:
        pass
    P, A = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    T = onnx.defs.OpSchema.AttrType
    onnx.defs.register_schema(onnx.defs.OpSchema(
        name, domain, 1,
        inputs=[P("query", "T"), P("key", "T"), P("value", "T"), P("past_state", "T"), P("decay", "T")],
        outputs=[P("output", "T"), P("present_state", "T")],
        type_constraints=[("T", ["tensor(float)"], "fp32 only: the state is the contract's fp32")],
        attributes=[A("q_num_heads", T.INT, ""), A("kv_num_heads", T.INT, ""), A("scale", T.FLOAT, ""),
                    A("update_rule", T.STRING, "")]))


def _trace(module: torch.nn.Module, n_layers: int, state: tuple, seq_dynamic: bool) -> onnx.ModelProto:
    """torch.onnx dynamo export with the contract's names; batch (and sequence) dynamic."""
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
                                                           _linear_attention},
                                 verbose=False)
    return prog.model_proto


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


def _int8_per_channel(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] fp32 -> (int8 [K, N], fp32 scale [N]): symmetric round-to-nearest per output column to
    [-qmax, qmax] (the rounding `fake_quant.round_weight` mirrors)."""
    amax = np.abs(w).max(axis=0)
    scale = (np.maximum(amax, 1e-12) / qmax).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


# the uint8 zero point (128) and the other constants every int8 MatMul reads
_INT8_CONSTANTS = {"int8.zero": np.uint8(128), "int8.qmax": np.float32(127.0),
                   "int8.tiny": np.float32(1e-30), "int8.last": np.array([-1], np.int64)}


def int8_matmul_nodes(name: str, a: str, y: str, q: str, scales: str, k: int) -> list[onnx.NodeProto]:
    """y = a @ W through an int8 GEMM: a's rows quantized to 8 bits each (symmetric, stored as uint8 around
    128), MatMulInteger with W's int8 [k, N], then the int32 sums scaled by row scale x column scale.

    Per row, not DynamicQuantizeMatMul's per tensor: on the demo the prompt path's KL was 1.2e-2 per
    tensor (one scale for a whole chunk) against 1.2e-3 step by step, and one row's scale must not depend
    on the others (batch rows are separate sequences).

    The row quantization is one blocked QuantizeLinear (a block = a whole row of k; opset 21), its zero
    point expanded to the row scales' shape as onnxruntime wants for blocked quantization. It rounds like
    the Div/Round/Add/Cast it replaced, bit for bit (both divide, round half to even, then add 128), with
    three nodes fewer per row quantization: `small` int8 decoded ~2 % faster."""
    scope = name.rsplit("/", 1)[0]
    v = lambda tag: f"{name}_Q8/{tag}"  # noqa: E731  (value names; the node of value `tag` is `{op}_{tag}_Q8`)

    def n(op: str, ins: list[str], tag: str, **kw) -> onnx.NodeProto:
        return onnx.helper.make_node(op, ins, [v(tag)], name=f"{scope}/{op}_{tag}_Q8", **kw)

    out = onnx.helper.make_node("Mul", [v("row_scaled"), scales], [y], name=f"{scope}/Mul_out_Q8")
    return [n("Abs", [a], "abs"), n("ReduceMax", [v("abs"), "int8.last"], "amax", keepdims=1),  # [..., 1]
            n("Max", [v("amax"), "int8.tiny"], "amax1"), n("Div", [v("amax1"), "int8.qmax"], "rscale"),
            n("Shape", [v("rscale")], "rshape"), n("Expand", ["int8.zero", v("rshape")], "zp"),
            n("QuantizeLinear", [a, v("rscale"), v("zp")], "a_u8", axis=-1, block_size=k),  # [..., k] uint8
            onnx.helper.make_node("MatMulInteger", [v("a_u8"), q, "int8.zero"], [v("acc")], name=f"{name}_Q8"),
            n("Cast", [v("acc")], "acc_f", to=onnx.TensorProto.FLOAT),
            n("Mul", [v("acc_f"), v("rscale")], "row_scaled"), out]


def _int8_dynamic(model: onnx.ModelProto, exclude: list[str], qmax: int) -> onnx.ModelProto:
    """Each weight MatMul not excluded -> `int8_matmul_nodes`: int8 weights per output channel, activations
    quantized per row at run time.

    Why not MatMulNBits bits=8 (blockwise): on a 2-core Xeon (VNNI + AMX), chained `small`-sized matmuls
    (208 MB) ran 15.4 vs 21.0 ms at M = 1 and 138 vs 705 ms at M = 256, a prompt chunk (onnxruntime's
    int8 GEMM uses AMX/VNNI, MatMulNBits' 8-bit path does not), with 11 % fewer bytes (no per-block
    scales). Weights use 7 bits (quant.INT8_QMAX_REDUCED) so no CPU's int8 kernel saturates.
    """
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(exclude)
    nodes, replaced = [], set()
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and node.name not in skip else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        qname, sname = f"{w.name}_Q8", f"{w.name}_scales"
        if qname not in inits:
            q, scale = _int8_per_channel(_finite(w.name, numpy_helper.to_array(w).astype(np.float32)), qmax)
            inits[qname], inits[sname] = numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)
        replaced.add(w.name)
        nodes += int8_matmul_nodes(node.name, node.input[0], node.output[0], qname, sname, k=int(w.dims[0]))
    if replaced:
        for cname, value in _INT8_CONSTANTS.items():
            inits.setdefault(cname, numpy_helper.from_array(np.asarray(value), cname))
    still_read = {x for n in nodes for x in n.input}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for name, t in inits.items() if name not in replaced or name in still_read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    """A NaN / inf weight would round to an arbitrary integer (silently, under --no-validate): refuse it."""
    if not np.isfinite(a).all():
        raise ExportError(f"weight {name.removesuffix('.T')} has NaN or inf values; cannot quantize it",
                          hint="check the checkpoint; an fp32 export keeps them as they are")
    return a


def _check_finite(model: onnx.ModelProto, op_types: tuple[str, ...], exclude: list[str]) -> None:
    """`_finite` for every weight the MatMulNBits quantizer is about to round."""
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(exclude)
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in skip:
            for name in node.input:
                if name in inits:
                    _finite(name, numpy_helper.to_array(inits[name]))


def _quantize(model: onnx.ModelProto, bits: int, block: int, exclude: list[str],
              op_types: tuple[str, ...] = ("MatMul",)) -> onnx.ModelProto:
    """int8 MatMuls -> an int8 GEMM with per-row activations (`_int8_dynamic`); int4 MatMuls and quantized Gathers ->
    onnxruntime.quantization's MatMulNBits / GatherBlockQuantized (blockwise, symmetric, accuracy_level 4)."""
    if bits == 8 and op_types == ("MatMul",):
        return _int8_dynamic(model, exclude, INT8_QMAX_REDUCED)  # the range Target("onnx").int8_qmax declares
    _check_finite(model, op_types, exclude)
    # onnxruntime only when quantizing: importing the exporters (CLI choices) must not load the engine
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits,
                                       op_types_to_quantize=op_types,
                                       quant_axes=(("Gather", 1),) if "Gather" in op_types else None)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=exclude, algo_config=cfg)
    q.process()
    return q.model.model


BITS = {"int8": 8, "int4": 4}


def _module_of(node_name: str) -> str:
    """The fqn of the module a node came from: its innermost scope (see name_nodes).

    `/model/layers.0.ffn.fc1/MatMul` -> `layers.0.ffn.fc1`; `/model/lm_head/MatMul_Q8` -> `lm_head`.
    """
    return node_name.rsplit("/", 2)[-2]


def quantize_onnx(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Apply a QuantPlan: each planned linear's MatMul and the embedding's Gather at their precision.

    MatMulNBitsQuantizer quantizes every eligible node of its op types that is not excluded
    (`nodes_to_include` adds to that set, it does not restrict it), so each pass excludes the rest.
    """
    for precision, bits in BITS.items():
        linears = set(plan.modules(precision))
        matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
        if any(_module_of(n) in linears for n in matmuls):
            model = _quantize(model, bits, plan.group_size, exclude=[n for n in matmuls if _module_of(n) not in linears])
        gathers = [n.name for n in model.graph.node if n.op_type == "Gather"]
        if plan.embedding in plan.modules(precision, kind="embedding"):
            model = _quantize(model, bits, plan.group_size, op_types=("Gather",),
                              exclude=[n for n in gathers if _module_of(n) != plan.embedding])
    return model


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


def _metadata(model: onnx.ModelProto, cfg: RetNetConfig, qc: QuantConfig, graph: str, tokenizer: str | None) -> None:
    props = {"retnet_edge.version": __version__, "retnet_edge.graph": graph, "retnet_edge.config": cfg.to_json(),
             "retnet_edge.quant": json.dumps(qc.to_dict()), "retnet_edge.state_layout": STATE_LAYOUT,
             "bos_id": str(cfg.bos_id), "eos_id": str(cfg.eos_id), "tokenizer": tokenizer or ""}
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name, model.producer_version = "retnet-edge", __version__


class SharedWeights:
    """weights.bin, written as initializers arrive: each distinct one (by content) stored once, 64-byte
    aligned, in the order the graphs first use them; the TensorProto then points at it (external data).

    The step and prefill graphs hold the same (quantized) weights; without sharing an artifact would carry
    them twice. Content, not names, decides, so graph-specific names do not matter, and the order of first
    use makes the file the same whether a graph was traced whole or stamped out layer by layer
    (`stamp.py`). onnxruntime memory-maps the file.
    """

    def __init__(self, out: Path):
        self.file = open(out / ONNX_WEIGHTS_FILE, "wb")
        self.offsets: dict[str, tuple[int, int]] = {}

    def add(self, t: onnx.TensorProto) -> onnx.TensorProto:
        """Write t's data (once per content) and point t at it; returns a copy of t without the data."""
        if not t.HasField("raw_data") or len(t.raw_data) < SHARE_MIN_BYTES:
            return t  # small initializers stay inline
        key = hashlib.sha256(t.raw_data).hexdigest()
        if key not in self.offsets:
            self.file.write(b"\0" * (-self.file.tell() % 64))  # 64-byte alignment for mmap'ed reads
            self.offsets[key] = (self.file.tell(), len(t.raw_data))
            self.file.write(t.raw_data)
        offset, length = self.offsets[key]
        set_external_data(t, location=ONNX_WEIGHTS_FILE, offset=offset, length=length)
        t.ClearField("raw_data")
        slim = onnx.TensorProto()  # a fresh message: a cleared field keeps its memory until the message goes
        slim.CopyFrom(t)
        return slim

    def close(self) -> None:
        self.file.close()


def first_use_order(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The graph's initializers in the order its nodes first read them (unread ones last)."""
    by_name = {t.name: t for t in graph.initializer}
    order: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name in by_name:
                order.setdefault(name)
    return [by_name[n] for n in [*order, *(n for n in by_name if n not in order)]]


def _save_shared(models: dict[str, onnx.ModelProto], out: Path) -> None:
    """Save whole graphs with one shared external weights file (`SharedWeights`, first-use order)."""
    weights = SharedWeights(out)
    try:
        for model in models.values():
            for t in first_use_order(model.graph):
                weights.add(t)
    finally:
        weights.close()
    for fname, model in models.items():
        onnx.save_model(model, str(out / fname))


FLAVORS = ("standard", "genai")
STEP_KINDS = ("step", "step-fused")


def graph_plan(flavor: str) -> dict[str, tuple[str, bool]]:
    """The graphs a flavour writes: {file: (kind, dynamic sequence)} (both the traced and the streamed export)."""
    if flavor not in FLAVORS:
        raise ExportError(f"unknown ONNX flavor {flavor!r}; expected one of {', '.join(FLAVORS)}")
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
        return to_fused_step(step)  # `small`, 12 layers' state update at 1 thread: 3.9 vs 8.7 ms (Xeon)
    return step if kind == "step" else to_prefill(step)


@register_target("onnx", int8_qmax=INT8_QMAX_REDUCED, int8_row_activations=True, prefill_weights=("same", "int8"),
                 flavor=FLAVORS)
def export_onnx(step: RetNetStep, qc: QuantConfig, plan: QuantPlan, out: Path, tokenizer: str | None = None,
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
            model = _trace(module, cfg.n_layers, state, dynamic)
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
        if graph == "genai":
            to_genai_io(model, cfg.n_layers)
        _metadata(model, cfg, qc, graph, tokenizer)
        protos[fname] = model
    _save_shared(protos, out)
    extra = write_genai_files(out, cfg, tokenizer) if flavor == "genai" else []
    return [*graphs, ONNX_WEIGHTS_FILE, *extra]
