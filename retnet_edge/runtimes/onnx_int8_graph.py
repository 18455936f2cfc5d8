"""The int8 GEMM as our ONNX graphs write it, and the prompt graph rewritten to run int8 weights derived from
an artifact's int4 codes (`runtimes/onnx_int8.py` says why and derives them).

Both the exporter (`exporters/onnx/quantize.int8_matmul_nodes`, the int8 linears it writes) and the prompt
graph rewrite (`plan_int8_prompt`) quantize a GEMM's input the same way: 8 bits per row, symmetric, stored as
uint8 around 128 (`row_quantize_nodes`). The rewrite runs at export (prefill_int8.onnx and its table), so the
gate checks it and the runtime opens it without importing onnx; an artifact exported before it keeps its
stored prompt graph.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_int8 import DERIVED_FILE, TABLE_FORMAT, layout

# the uint8 zero point (128) and the other constants every int8 GEMM reads
INT8_CONSTANTS = {"int8.zero": np.uint8(128), "int8.qmax": np.float32(127.0),
                  "int8.tiny": np.float32(1e-30), "int8.last": np.array([-1], np.int64)}

NodeMaker = Callable[..., onnx.NodeProto]  # (op, inputs, tag, **attrs) -> the node writing value `tag`


def row_quantize_nodes(n: NodeMaker, a: str, k: int) -> list[onnx.NodeProto]:
    """a [..., k] fp32 -> values "a_u8" (uint8 around 128) and "rscale" [..., 1]: each row symmetric to 8 bits.

    One blocked QuantizeLinear (a block = a whole row of k; opset 21), its zero point expanded to the row
    scales' shape as onnxruntime wants for blocked quantization."""
    return [n("Abs", [a], "abs"), n("ReduceMax", ["{abs}", "int8.last"], "amax", keepdims=1),  # [..., 1]
            n("Max", ["{amax}", "int8.tiny"], "amax1"), n("Div", ["{amax1}", "int8.qmax"], "rscale"),
            n("Shape", ["{rscale}"], "rshape"), n("Expand", ["int8.zero", "{rshape}"], "zp"),
            n("QuantizeLinear", [a, "{rscale}", "{zp}"], "a_u8", axis=-1, block_size=k)]  # [..., k] uint8


def node_maker(scope: str, value: Callable[[str], str], suffix: str) -> NodeMaker:
    """A maker of nodes named `{scope}/{op}_{tag}{suffix}` writing value(tag); "{tag}" in an input is value(tag)."""
    def n(op: str, ins: list[str], tag: str, **kw) -> onnx.NodeProto:
        ins = [value(x[1:-1]) if x.startswith("{") else x for x in ins]
        return onnx.helper.make_node(op, ins, [value(tag)], name=f"{scope}/{op}_{tag}{suffix}", **kw)
    return n


def qgemm_nodes(name: str, a: str, y: str, q: str, scales: str, k: int, n_out: int) -> list[onnx.NodeProto]:
    """y [..., N] = a [..., K] @ W.T for int8 W [N, K] (MatMulNBits' row order): a's rows quantized to 8 bits
    (`row_quantize_nodes`), com.microsoft QGemm with transB (onnxruntime packs B at load, transposing it:
    147 vs MatMulInteger's 154 GFLOP/s on [128 x 1024] . [1024 x 2816], and no copy is transposed here),
    its output scaled per column by the op and per row after. QGemm is 2-D: a is flattened to [M, K] and the
    result reshaped back to a's leading dims. Reads `shape_constants(k, n_out)`."""
    scope = name.rsplit("/", 1)[0]
    value = lambda tag: f"{name}_P8/{tag}"  # noqa: E731
    n = node_maker(scope, value, "_P8")
    rows_of_k, width, b_zero = shape_constants(k, n_out)
    return [n("Reshape", [a, rows_of_k], "a2d"),  # [M, K]
            *row_quantize_nodes(n, value("a2d"), k),
            n("QGemm", ["{a_u8}", "int8.one", "int8.zero", q, scales, b_zero], "acc", domain="com.microsoft", transB=1),
            n("Mul", ["{acc}", "{rscale}"], "rows"),  # [M, N]
            n("Shape", [a], "lead", end=-1), n("Concat", ["{lead}", width], "out_shape", axis=0),
            onnx.helper.make_node("Reshape", [value("rows"), value("out_shape")], [y], name=f"{scope}/Reshape_out_P8")]


def shape_constants(k: int, n_out: int) -> tuple[str, str, str]:
    """The names of the constants `qgemm_nodes` reads: the shapes [-1, k] and [n_out] it reshapes with, and
    B's zero points (n_out zeros: QGemm wants one per column where the scales are per column)."""
    return f"int8.rows_of_{k}", f"int8.width_{n_out}", f"int8.b_zero_{n_out}"


def _constants(k: int, n_out: int) -> dict[str, np.ndarray]:
    rows_of_k, width, b_zero = shape_constants(k, n_out)
    return {rows_of_k: np.array([-1, k], np.int64), width: np.array([n_out], np.int64),
            b_zero: np.zeros(n_out, np.int8), "int8.one": np.float32(1.0)}


def _derivable(node: onnx.NodeProto, attrs: dict, inits: dict) -> bool:
    """A 4-bit MatMulNBits with constant B and fp32 scales, uint8 zero points or none, no g_idx and no bias."""
    ins = [*node.input, "", "", ""]
    return (node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and attrs.get("bits", 4) == 4
            and ins[1] in inits and ins[2] in inits and not ins[4] and not ins[5]
            and inits[ins[2]].data_type == onnx.TensorProto.FLOAT
            and (not ins[3] or (ins[3] in inits and inits[ins[3]].data_type == onnx.TensorProto.UINT8)))


@dataclass
class PromptPlan:
    """prefill.onnx rewritten: each derivable MatMulNBits now reads int8 weights declared in DERIVED_FILE, and
    the table saying where each one's codes are read from and its int8 weights written to (`onnx_int8`)."""

    model: onnx.ModelProto
    table: dict  # onnx_int8.derive_weights' input: {"format", "bytes", "files", "linears": [...]}
    inline: tuple[str, ...]  # int4 sources stored inside the graph (a tiny model): no table can point at them

    @property
    def portable(self) -> bool:
        """Every source lies in an external file: the table alone can drive the derivation."""
        return not self.inline


def plan_int8_prompt(path: Path) -> PromptPlan | None:
    """prefill.onnx with every derivable 4-bit MatMulNBits (`_derivable`) replaced by `qgemm_nodes`; None when
    it has none (an int8 artifact, `--prefill-weights int8`). Nothing is derived here."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    nodes, linears, dead, shapes, inline = [], [], set(), set(), []

    def source(name: str) -> dict:
        t = inits[name]
        if t.data_location != onnx.TensorProto.EXTERNAL:
            inline.append(name)
            return {"inline": name}
        kv = {e.key: e.value for e in t.external_data}
        return {"file": kv.get("location", ""), "offset": int(kv.get("offset", 0)), "length": int(kv.get("length", -1))}

    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not _derivable(node, attrs, inits):
            nodes.append(node)
            continue
        n_out, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        ins = [*node.input, "", ""]
        qname, sname = f"{ins[1]}_P8", f"{ins[1]}_P8_scales"
        linears.append({"name": node.name, "n": n_out, "k": k, "block": block, "q": qname, "s": sname,
                        "b": source(ins[1]), "scales": source(ins[2]),
                        "zero_points": source(ins[3]) if ins[3] else None})
        dead.update(x for x in ins[1:4] if x)
        shapes.add((k, n_out))
        nodes += qgemm_nodes(node.name, node.input[0], node.output[0], qname, sname, k, n_out)
    if not linears:
        return None
    places, offset = layout([(lin["n"], lin["k"]) for lin in linears])
    declared = []
    for lin, (q_at, s_at) in zip(linears, places):
        declared += [_external_declaration(lin.pop("q"), onnx.TensorProto.INT8, (lin["n"], lin["k"]), q_at),
                     _external_declaration(lin.pop("s"), onnx.TensorProto.FLOAT, (lin["n"],), s_at)]
        lin.update(q_at=q_at, s_at=s_at)
    still_read = {x for node in nodes for x in node.input}
    kept = [t for t in model.graph.initializer if t.name not in dead or t.name in still_read]
    present = {t.name for t in kept}
    constants = {**INT8_CONSTANTS, **{c: v for k, n_out in shapes for c, v in _constants(k, n_out).items()}}
    kept += [numpy_helper.from_array(np.asarray(v), c) for c, v in constants.items() if c not in present]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + declared)
    files = sorted({e.value for t in kept if t.data_location == onnx.TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"}
                   | {s["file"] for lin in linears for s in (lin["b"], lin["scales"], lin["zero_points"])
                      if s and "file" in s})
    table = {"format": TABLE_FORMAT, "bytes": offset, "files": files, "linears": linears}
    return PromptPlan(model, table, tuple(inline))


def write_int8_prompt(plan: PromptPlan, graph_path: Path, table_path: Path) -> None:
    """The rewritten graph and its table, beside prefill.onnx (the export's temporary directory); for a
    `portable` plan only (a table cannot point at codes stored inside the graph)."""
    onnx.save_model(plan.model, str(graph_path))
    table_path.write_text(json.dumps(plan.table, indent=1) + "\n")


def _external_declaration(name: str, dtype: int, shape: tuple[int, ...], offset: int) -> onnx.TensorProto:
    """An initializer declared in DERIVED_FILE at `offset` (its values come with the session options)."""
    t = onnx.TensorProto(name=name, data_type=dtype, dims=shape, data_location=onnx.TensorProto.EXTERNAL)
    length = int(np.prod(shape)) * onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize
    for key, value in (("location", DERIVED_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t
