"""Streamed ONNX export: trace a one-layer template once, stamp its layer out n_layers times, and stream
each layer's (quantized) weights into weights.bin while only that layer is in memory.

Why: tracing the whole model holds the fp32 model, the exported program and the ONNX proto's copy of
every weight at once (1.3B: 17.5 GB). A RetNet's layers are one graph repeated, so:

1. **Template.** A step (and a prefill) module of the model's shape with one layer, every tensor
   random: `torch.onnx` traces it (`trace.trace_graph`). Its initializers are recognised by content — each
   template tensor is random, so an initializer equal to a tensor (or its transpose: the exporter folds
   W -> Wᵀ for MatMul) *is* that tensor. Whatever matches none is a constant shared by all layers (γ,
   frequencies, shapes).
2. **Stamp.** Node scopes (`/model/layers.0.../`: `model.RetNetLayer` runs a layer's whole computation)
   split the template into prefix, layer and suffix. The residual stream is the one weight-dependent
   value crossing each boundary; layer i is a copy of the layer with its own value names, state I/O
   `past.{i}` / `present.{i}` and weights, reading layer i-1's residual output. (A whole-model trace
   computes the prefill's decay masks once and shares them; here each layer computes its own: the same
   values, a few more small nodes.)
3. **Weights, in the order the graph first reads them.** For each node, its weights come from the
   checkpoint (`streaming.ModelWeights`, one layer resident at a time, upcast per tensor); a planned MatMul /
   Gather is quantized on a one-node graph by the same call that quantizes the whole graph
   (`quantize.quantize_matmuls`: onnxruntime's MatMulNBitsQuantizer, or the int8 GEMM's nodes), so weights.bin is
   byte-for-byte the whole-model path's (tests/exporters/test_onnx_streamed.py); an int8 MatMul becomes a group of nodes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ...base.interrupts import run_tied
from ...checkpoints.streaming import ModelWeights
from ...contract import ONNX_PREFILL_FILE, ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE, ONNX_WEIGHTS_FILE
from ...contract.request import STATE_OPS
from ...contract.quant import INT8_QMAX_REDUCED, QuantConfig, QuantPlan
from ...core.config import RetNetConfig
from ...core.model import RetNet
from ...core.step import RetNetStep, to_recurrent
from ...errors import ExportError, RetNetEdgeError
from ..target import register_target
from .genai import to_genai_io, write_genai_files
from .logits import add_logits_to_keep
from .quantize import BITS, quantize_matmuls
from .trace import (
    ONNX_FLAVORS,
    OPSET,
    STEP_KINDS,
    check_prefill_weights,
    graph_module,
    graph_plan,
    module_of,
    name_nodes,
    position_dependent_nodes,
    resolve_state_op,
    trace_graph,
)
from .weights import SharedWeights, set_metadata

TEMPLATE_LAYERS = 1
_SCOPE = re.compile(r"^/model/layers\.(\d+)[./]")  # a node of layer N (see trace.name_nodes)


def template_step(cfg: RetNetConfig, seed: int = 0) -> RetNetStep:
    """A one-layer step module of the checkpoint's shape, every tensor random and distinct. (Zeros or ones
    would be cheaper to make but not to find: the exporter merges equal constants.)"""
    cfg = dataclasses.replace(cfg, n_layers=TEMPLATE_LAYERS)
    model = RetNet.empty(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # norms too: every tensor's content must be unique to find it again
            p.normal_(0.0, 0.02, generator=g)
    return to_recurrent(model)


@dataclass(frozen=True)
class WeightRef:
    """An initializer that is (a view of) a checkpoint tensor: `layers.L.<local>` or an outer tensor."""

    local: str  # "retention.q_proj.weight" for layer tensors, else the full name ("embed.weight")
    layer: int | None  # None: outside the layers
    transposed: bool

    def fqn(self) -> str:
        return self.local if self.layer is None else f"layers.{self.layer}.{self.local}"

    def at(self, layer: int) -> "WeightRef":
        return self if self.layer is None else dataclasses.replace(self, layer=layer)


def _digest(a: np.ndarray) -> tuple:
    return (str(a.dtype), tuple(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())


def _weight_table(template: RetNetStep) -> dict[tuple, WeightRef]:
    """Content digest -> WeightRef for every template tensor (as stored and, for matrices, transposed)."""
    table: dict[tuple, WeightRef] = {}
    for name, p in template.named_parameters():
        m = re.match(r"layers\.(\d+)\.(.+)$", name)
        ref = WeightRef(m.group(2), int(m.group(1)), False) if m else WeightRef(name, None, False)
        a = p.detach().numpy()
        table[_digest(a)] = ref
        if a.ndim == 2:
            table[_digest(a.T)] = dataclasses.replace(ref, transposed=True)
    return table


@dataclass
class Template:
    """A traced one-layer template graph split into prefix / layer / suffix, its weights named."""

    proto: onnx.ModelProto
    prefix: list[onnx.NodeProto]
    layer: list[onnx.NodeProto]
    suffix: list[onnx.NodeProto]
    refs: dict[str, WeightRef]  # initializer name -> checkpoint tensor it holds
    shared: dict[str, TensorProto]  # initializers shared by every layer (constants)
    resid_in: str  # the residual stream into the layer (the prefix's embedding output)
    resid_out: str  # and out of it (what the suffix reads)


def _ref_of(t: TensorProto, table: dict[tuple, WeightRef]) -> WeightRef | None:
    if t.data_type != TensorProto.FLOAT or not t.HasField("raw_data") and not t.float_data:
        return None
    return table.get(_digest(numpy_helper.to_array(t)))


def _without_weights(proto: onnx.ModelProto, table: dict[tuple, WeightRef]) -> onnx.ModelProto:
    """A fresh copy of the traced graph whose template weights are empty placeholders (same name, dtype,
    dims). Clearing them in place would not do: protobuf keeps a message's memory until the whole message
    goes, and the template's weights are the size of a layer plus the embedding and head."""
    weights = []
    for t in proto.graph.initializer:
        ref = _ref_of(t, table)
        if ref is not None:
            weights.append((t.name, ref))
    keep = [copy.deepcopy(t) for t in proto.graph.initializer if t.name not in dict(weights)]
    del proto.graph.initializer[:]
    slim = copy.deepcopy(proto)
    slim.graph.initializer.extend(keep)
    slim.metadata_props.add(key="retnet_edge.template_weights",
                            value=json.dumps({name: dataclasses.asdict(ref) for name, ref in weights}))
    return slim


def split_template(proto: onnx.ModelProto, table: dict[tuple, WeightRef], graph: str) -> Template:
    """Recognise weights by content (or from `_without_weights`' record) and the layers by node scope;
    fail loudly on anything unexpected."""
    refs, shared = {}, {}
    recorded = next((json.loads(p.value) for p in proto.metadata_props if p.key == "retnet_edge.template_weights"), {})
    refs = {name: WeightRef(**r) for name, r in recorded.items()}
    for t in proto.graph.initializer:
        ref = _ref_of(t, table)
        if ref is not None:
            refs[t.name] = ref
        else:
            shared[t.name] = t
    wanted = {r.fqn() for r in table.values()}
    missing = sorted(wanted - {r.fqn() for r in refs.values()})
    if missing:
        raise ExportError(f"streamed export: the traced {graph} template folds {', '.join(missing[:4])} into other "
                          "constants; export with streamed=False (the whole-model path)")
    parts: dict[str, list] = {"prefix": [], "layer": [], "suffix": []}
    at = 0
    for node in proto.graph.node:
        m = _SCOPE.match(node.name)
        part = "layer" if m else "prefix" if at == 0 else "suffix"
        if m and m.group(1) != "0" or list(parts).index(part) < at:
            raise ExportError(f"streamed export: the {graph} template's node {node.name} is out of layer order")
        at = list(parts).index(part)
        parts[part].append(node)
    layer = parts["layer"]
    made = {o: part for part, nodes in parts.items() for n in nodes for o in n.output}
    outputs = {o.name for o in proto.graph.output}
    dep = _weight_dependent(proto, set(refs))
    # the residual stream is the one weight-dependent value crossing each boundary (cos/sin, masks and
    # shapes cross too, but they depend on positions and shapes alone)
    into = {x for n in layer for x in n.input if made.get(x) == "prefix" and x in dep}
    out = {x for n in parts["suffix"] for x in n.input if made.get(x) == "layer" and x in dep and x not in outputs}
    if len(into) != 1 or len(out) != 1 or any(made.get(x) in ("layer", "suffix") for n in parts["prefix"] for x in n.input):
        raise ExportError(f"streamed export: the {graph} template's layer is not linked by one residual stream")
    return Template(proto, parts["prefix"], layer, parts["suffix"], refs, shared, into.pop(), out.pop())


def _weight_dependent(proto: onnx.ModelProto, weights: set[str]) -> set[str]:
    """Values computed from a weight or a state (not from shapes and positions alone); Shape cuts the chain."""
    dep = set(weights) | {i.name for i in proto.graph.input if i.name.startswith("past.")}
    for node in proto.graph.node:
        if node.op_type not in ("Shape", "Size") and any(x in dep for x in node.input):
            dep.update(node.output)
    return dep


class _Stamper:
    """Names of stamped layer i: its own values get a suffix (layer 0 keeps the template's), its state I/O
    its index, its residual input the previous layer's output."""

    def __init__(self, tpl: Template, layer: int, resid_in: str):
        self.tpl, self.layer, self.resid_in = tpl, layer, resid_in
        self.own = {o for n in tpl.layer for o in n.output}

    def value(self, name: str) -> str:
        for kind in ("past", "present"):
            if name == f"{kind}.0.recurrent":
                return f"{kind}.{self.layer}.recurrent"
        if name == self.tpl.resid_in:
            return self.resid_in
        if name in self.own and self.layer:
            return f"{name}__{self.layer}"
        return name

    def node_name(self, name: str) -> str:
        return re.sub(r"layers\.0(?=[./])", f"layers.{self.layer}", name)


@dataclass
class StampedNode:
    node: onnx.NodeProto
    weights: dict[int, WeightRef]  # input slot -> the checkpoint tensor it reads


def stamp(tpl: Template, n_layers: int) -> Iterator[StampedNode]:
    """The n-layer graph's nodes in order; weight inputs named by WeightRef (materialised later)."""

    def emit(node: onnx.NodeProto, names, layer: int | None) -> StampedNode:
        n = copy.deepcopy(node)
        weights = {}
        for slot, x in enumerate(node.input):
            ref = tpl.refs.get(x)
            if ref is not None:
                weights[slot] = ref.at(layer) if layer is not None else ref
                n.input[slot] = ""  # filled in when the weight is written
            elif names is not None:
                n.input[slot] = names.value(x)
        if names is not None:
            n.output[:] = [names.value(o) for o in node.output]
            n.name = names.node_name(node.name)
        return StampedNode(n, weights)

    for node in tpl.prefix:
        yield emit(node, None, None)
    resid = tpl.resid_in
    for i in range(n_layers):
        names = _Stamper(tpl, i, resid)
        for node in tpl.layer:
            yield emit(node, names, i)
        resid = names.value(tpl.resid_out)
    for node in tpl.suffix:
        sn = emit(node, None, None)
        sn.node.input[:] = [resid if x == tpl.resid_out else x for x in sn.node.input]
        yield sn


def _io(tpl: Template, n_layers: int) -> tuple[list, list]:
    """Graph inputs / outputs for n layers: the template's, with its state I/O cloned per layer."""
    def expand(values, kind):
        fixed = [v for v in values if not v.name.startswith(f"{kind}.")]
        state = next(v for v in values if v.name == f"{kind}.0.recurrent")
        out = []
        for i in range(n_layers):
            v = copy.deepcopy(state)
            v.name = f"{kind}.{i}.recurrent"
            out.append(v)
        return fixed + out

    return expand(tpl.proto.graph.input, "past"), expand(tpl.proto.graph.output, "present")


class WeightSource:
    """Checkpoint tensors for the graph writer, one layer resident at a time, and quantized nodes cached
    by (tensor, precision) so the prefill graph reuses what the step graph wrote."""

    def __init__(self, weights: ModelWeights, plan: QuantPlan, writer: SharedWeights, log):
        self.weights, self.plan, self.writer, self.log = weights, plan, writer, log
        self._layer: tuple[int, dict] | None = None
        self._outer: dict | None = None
        self.cache: dict[tuple, tuple[onnx.NodeProto | None, list[TensorProto]]] = {}

    def tensor(self, ref: WeightRef) -> np.ndarray:
        if ref.layer is None:
            if self._outer is None:
                self._outer = {k: v.numpy() for k, v in self.weights.outer().items()}
            a = self._outer[ref.local]
        else:
            if self._layer is None or self._layer[0] != ref.layer:
                self._layer = None  # release the previous layer before reading the next
                module = self.weights.layer(ref.layer)
                self._layer = (ref.layer, {k: v.detach().numpy() for k, v in module.named_parameters()})
                self.log(f"  layer {ref.layer + 1}/{self.weights.cfg.n_layers} ...")
            a = self._layer[1][ref.local]
        return np.ascontiguousarray(a.T) if ref.transposed else a

    def release(self) -> None:
        self._layer = self._outer = None


def _one_node_quantized(node: onnx.NodeProto, slot: int, data: np.ndarray, bits: int, block: int,
                        name: str, method: str = "rtn", codes=None, capture=None
                        ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Quantize one MatMul (weight [K, N]) or Gather (table [V, D]) through MatMulNBitsQuantizer on a graph
    holding just that node: the per-node call quantizing a whole graph makes, so the bytes are the same."""
    w = numpy_helper.from_array(data, name)
    if node.op_type == "MatMul":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, data.shape[0]])
        inputs, op_types = (["x", name]), ("MatMul",)
    else:
        x = helper.make_tensor_value_info("x", TensorProto.INT64, [1])
        inputs, op_types = ([name, "x"]), ("Gather",)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    one = helper.make_node(node.op_type, inputs, ["y"], name=node.name, **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    model = helper.make_model(helper.make_graph([one], "q", [x], [y], [w]), opset_imports=[helper.make_opsetid("", OPSET)])
    q = quantize_matmuls(model, bits, block, exclude=[], op_types=op_types, method=method, codes=codes, capture=capture)
    # copies, not references: a protobuf sub-message keeps its whole parent alive, and the parent still
    # holds the fp32 weight (7B: ~1 GB a layer kept for the rest of the export)
    return [copy.deepcopy(n) for n in q.graph.node], [copy.deepcopy(t) for t in q.graph.initializer]


def write_graph(tpl: Template, source: WeightSource, n_layers: int, kind: str) -> onnx.ModelProto:
    """The n-layer graph with every weight written to weights.bin as its first reader is reached."""
    plan = source.plan.for_graph(kind)
    nodes, inits = [], []
    seen: set[str] = set()

    def add_init(t: TensorProto) -> None:
        if t.name not in seen:
            seen.add(t.name)
            inits.append(source.writer.add(t))

    for sn in stamp(tpl, n_layers):
        node, group = sn.node, None
        for slot in range(len(node.input)):
            if slot not in sn.weights:
                x = node.input[slot]
                if x in tpl.shared:
                    add_init(copy.deepcopy(tpl.shared[x]))
                continue
            ref = sn.weights[slot]
            module = module_of(node.name)
            precision = "fp32"
            if node.op_type == "MatMul" and slot == 1:
                precision = plan.precision.get(module, "fp32")
            elif node.op_type == "Gather" and slot == 0 and module == plan.embedding:
                precision = plan.precision.get(plan.embedding, "fp32")
            # (the module too where calibrated codes are per module: a shared weight must not take another's)
            key = (ref, precision, node.op_type, module if plan.codes is not None else None)
            if key not in source.cache:
                name = ref.fqn() + (".T" if ref.transposed else "")
                data = source.tensor(ref)
                if precision == "fp32":
                    source.cache[key] = (None, [source.writer.add(numpy_helper.from_array(data, name))])
                else:
                    qnode, qinits = _one_node_quantized(node, slot, data, BITS[precision], plan.group_size, name,
                                                        plan.int4_method, plan.codes, plan.capture)
                    source.cache[key] = (qnode, [source.writer.add(t) for t in qinits])
            qnode, tensors = source.cache[key]
            for t in tensors:
                add_init(t)
            if qnode is None:
                node.input[slot] = tensors[0].name
            else:  # the quantized node(s) in place of this one, reading its data input, writing its output
                data_in = node.input[0] if node.op_type == "MatMul" else node.input[1]
                group = [copy.deepcopy(n) for n in qnode]
                for n in group:
                    n.input[:] = [data_in if x == "x" else x for x in n.input]
                    n.output[:] = [node.output[0] if x == "y" else x for x in n.output]
        nodes.extend(group or [node])
    inputs, outputs = _io(tpl, n_layers)
    graph = helper.make_graph(nodes, tpl.proto.graph.name or kind, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=list(tpl.proto.opset_import), ir_version=tpl.proto.ir_version)
    model.functions.extend(tpl.proto.functions)
    return model


def _trace_templates_here(cfg: dict, graphs: dict[str, tuple[str, bool]], standard_op: bool | None = None
                          ) -> dict[str, bytes] | str:
    """Trace and check each template graph ({file: (kind, dynamic T)}); the slim graphs (template weights
    replaced by their record, `_without_weights`) serialized, or the one-line error."""
    try:
        step = template_step(RetNetConfig.from_dict(cfg))
        table = _weight_table(step)
        out = {}
        for fname, (kind, dynamic) in graphs.items():
            try:
                proto = trace_graph(graph_module(kind, step), TEMPLATE_LAYERS, step.init_state(2), dynamic, standard_op)
            except Exception as exc:  # the exporter raises many types; one clear message
                raise ExportError(f"torch.onnx export of the {kind} template failed: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0]}") from exc
            name_nodes(proto)
            slim = _without_weights(proto, table)
            split_template(slim, table, kind)  # every check, here where the template's tensors are known
            out[fname] = slim.SerializeToString()
        return out
    except RetNetEdgeError as exc:
        return str(exc)


def trace_templates(weights: ModelWeights, graphs: dict[str, tuple[str, bool]], log, workdir: Path,
                    standard_op: bool | None = None) -> dict[str, Template]:
    """The template graphs, traced in a child interpreter: torch.onnx keeps a traced program's tensors alive
    after it returns (measured: the template's weights, 0.8 GB at 1.3B and 2.1 GB at 7B, for the rest of
    the export), and a process that exits hands everything back. (A plain subprocess, not
    multiprocessing: its spawn re-imports the caller's __main__, which a user's script may not guard.)"""
    import sys

    log(f"  tracing the {' and '.join(k for k, _ in graphs.values())} template (one layer, in a child process) ...")
    job = workdir / ".templates"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"cfg": weights.cfg.to_dict(), "graphs": graphs, "standard_op": standard_op}))
    try:
        # tied: a killed export takes its tracing child with it (issue 29)
        proc = run_tied([sys.executable, "-c", "import sys; from retnet_edge.exporters.onnx.stamp import trace_child; "
                         "sys.exit(trace_child(sys.argv[1]))", str(job)])
        err = job / "error.txt"
        if err.is_file():
            raise ExportError(err.read_text())
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportError(f"tracing the templates failed (exit {proc.returncode}): {tail}")
        return {fname: split_template(onnx.load(str(job / f"{kind}.onnx")), {}, kind)
                for fname, (kind, _) in graphs.items()}
    finally:
        shutil.rmtree(job, ignore_errors=True)


def trace_child(job: str) -> int:
    """The child's side of `trace_templates`: job.json in, {kind}.onnx (or error.txt) out."""
    d = Path(job)
    spec = json.loads((d / "job.json").read_text())
    result = _trace_templates_here(spec["cfg"], {f: tuple(v) for f, v in spec["graphs"].items()}, spec.get("standard_op"))
    if isinstance(result, str):
        (d / "error.txt").write_text(result)
        return 0
    for fname, blob in result.items():
        (d / f"{spec['graphs'][fname][0]}.onnx").write_bytes(blob)
    return 0


@register_target("onnx", int8_qmax=INT8_QMAX_REDUCED, int8_row_activations=True, prefill_weights=("same", "int8"),
                 int4_negative_scales=True,  # MLAS' own symmetric rule writes them
                 embedding_int8_blocks=True,  # GatherBlockQuantized: blocks of the group size
                 flavor=ONNX_FLAVORS, state_op=STATE_OPS)
def export_onnx(weights: ModelWeights, qc: QuantConfig, plan: QuantPlan, out: Path, tokenizer: str | None = None,
                log=lambda s: None, flavor: str = "standard", state_op: str = "auto") -> list[str]:
    """Write the ONNX target's graphs into `out` from a checkpoint read layer by layer; returns the file names.

    standard: model.onnx (static step) + prefill.onnx (chunk graph), the documented contract, and
    model_fused.onnx (the step with a LinearAttention node, which the runner decodes with; `state_op`:
    ai.onnx opset 27's or com.microsoft's, see trace.resolve_state_op).
    genai: one model.onnx (the chunk graph, any length) with onnxruntime-genai's I/O names, plus
    genai_config.json and tokenizer_config.json (see genai.py). The whole-model trace of the same files
    lives in tests/ as the oracle this export is compared with (weights.bin byte-identical)."""
    graphs = graph_plan(flavor)
    check_prefill_weights(qc, graphs)
    cfg = weights.cfg
    templates = trace_templates(weights, graphs, log, out, resolve_state_op(state_op, log))
    for fname, (kind, _) in graphs.items():
        bad = position_dependent_nodes(templates[fname].proto) if kind in STEP_KINDS else []
        if bad:
            raise ExportError(f"the step graph has position-dependent nodes: {', '.join(bad[:8])}")
    writer = SharedWeights(out)
    source = WeightSource(weights, plan, writer, log)
    try:
        protos = {}
        for fname, (kind, _) in graphs.items():
            log(f"  writing the {kind} graph ({cfg.n_layers} layers"
                + (f", {qc.scheme.value}, lm_head {qc.head_precision}, embedding {qc.embedding}" if plan.quantizes_anything else "")
                + ") ...")
            model = write_graph(templates[fname], source, cfg.n_layers, kind)
            if kind == "prefill":
                add_logits_to_keep(model)
            if kind == "genai":
                to_genai_io(model, cfg.n_layers)
            set_metadata(model, cfg, qc, kind, tokenizer)
            protos[fname] = model
    finally:
        source.release()
        writer.close()
    for fname, model in protos.items():
        onnx.save_model(model, str(out / fname))
    extra = write_genai_files(out, cfg, tokenizer, log=log) if flavor == "genai" else []
    if ONNX_PREFILL_FILE in protos:
        extra += write_int8_prompt_graph(out, log)
    return [*graphs, ONNX_WEIGHTS_FILE, *extra]


def write_int8_prompt_graph(out: Path, log) -> list[str]:
    """prefill_int8.onnx and its table where prefill.onnx has int4 linears (runtimes/onnx_int8.py: the runtime
    derives their int8 weights when it opens the graph; the gate checks it with the rest); [] otherwise."""
    from ...runtimes.onnx_int8_graph import plan_int8_prompt, write_int8_prompt

    plan = plan_int8_prompt(out / ONNX_PREFILL_FILE)
    if plan is None or not plan.portable:
        return []
    write_int8_prompt(plan, out / ONNX_PREFILL_INT8_FILE, out / ONNX_PREFILL_INT8_TABLE)
    log(f"  writing the int8 prompt graph ({len(plan.table['linears'])} int4 linears whose int8 weights the runtime "
        "derives at load) ...")
    return [ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE]
