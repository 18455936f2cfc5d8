"""The int8 GEMM as our ONNX graphs write it, and int8 prompt weights derived from an artifact's int4 codes.

Both the exporter (`exporters/onnx/quantize.int8_matmul_nodes`, the int8 linears it writes) and the runtime
(`int8_prompt_model`, the prompt graph it opens) quantize a GEMM's input the same way: 8 bits per row,
symmetric, stored as uint8 around 128 (`row_quantize_nodes`). The runtime owns the nodes; the exporter
imports them (imports run runtimes -> exporters).

Why the runtime derives int8 prompt weights: onnxruntime's MatMulNBits (4-bit) runs a 128-row prompt chunk of
`small`'s FFN ([128 x 1024] . [1024 x 2816], 1 thread, AMD EPYC avx2) at 61 GFLOP/s, its int8 GEMM at 151,
and MatMulNBits is 81 % of an int4 prompt's time. `export --prefill-weights int8` stores int8 copies (+70 %
file); this makes them when the prompt graph opens, from the int4 codes the artifact already holds, so the
file stays int4. The prompt then computes with the int4 weights re-rounded to int8 per output channel: the
decode graph's weights, as closely as 7 bits allow.
"""
from __future__ import annotations

from pathlib import Path
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..contract.quant import INT8_QMAX_REDUCED
from ..errors import ArtifactError

# the uint8 zero point (128) and the other constants every int8 GEMM reads
INT8_CONSTANTS = {"int8.zero": np.uint8(128), "int8.qmax": np.float32(127.0),
                  "int8.tiny": np.float32(1e-30), "int8.last": np.array([-1], np.int64)}
WEIGHT_QMAX = INT8_QMAX_REDUCED  # int8 weights use 7 bits: no CPU's int8 kernel saturates
FRACTION_BITS = 8  # the fixed point of `derive_int8`'s ratio s_block / s_row

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


# ---------------------------------------------------------------------------------------------------------
# int8 prompt weights from MatMulNBits' int4 codes

def derive_int8(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int,
                block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' 4-bit B [N, K / block, block / 2] (two codes a byte, the first in the low nibble), its
    scales [N, K / block] and integer zero points (None: 8; uint8: two a byte) -> (int8 W [N, K], scale [N]).

    W = (q - zp) * s per block; the row's scale s8 is max|W[n]| / 64; each code is round(c * s / s8) with
    c = q - zp and the ratio s / s8 in 16-bit fixed point (8 fraction bits; |c| * ratio <= 64 * 256 fits),
    round half up. Two int16 multiply-adds a byte, 4 ns per weight here, against 12 for the float round trip;
    the rounding differs from float's in < 1 % of weights by one step, and deterministically (the export gate
    runs this same function)."""
    blocks = k // block
    c_lo = (b & 0x0F).astype(np.int16)  # [N, blocks, block / 2]
    c_hi = (b >> 4).astype(np.int16)
    if zero_points is None:
        zp = np.full((n, blocks, 1), 8, np.int16)
    else:
        packed = zero_points.reshape(n, -1)
        zp = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1)[:, :blocks, None].astype(np.int16)
    c_lo -= zp
    c_hi -= zp
    s = scales.reshape(n, blocks).astype(np.float32)
    top = _last_axis_max(np.maximum(np.abs(c_lo), np.abs(c_hi))).astype(np.float32)  # [N, blocks] max |c|
    row = (np.maximum((top * np.abs(s)).max(1), 1e-12) / WEIGHT_QMAX).astype(np.float32)  # [N]
    ratio = np.rint(s / row[:, None] * (1 << FRACTION_BITS)).astype(np.int16)[..., None]  # [N, blocks, 1]
    half = np.int16(1 << (FRACTION_BITS - 1))
    for c in (c_lo, c_hi):
        c *= ratio
        c += half
        c >>= FRACTION_BITS
    q = np.empty((n, blocks, block), np.int8)
    q[..., 0::2], q[..., 1::2] = c_lo, c_hi
    return q.reshape(n, k), row


def _last_axis_max(a: np.ndarray) -> np.ndarray:
    """a.max(-1) by halving: numpy reduces a short last axis (16 codes) row by row, 5x slower than four
    element-wise maxima of its halves."""
    while a.shape[-1] > 1 and a.shape[-1] % 2 == 0:
        half = a.shape[-1] // 2
        a = np.maximum(a[..., :half], a[..., half:])
    return a.max(-1)


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


def external_array(directory: Path, t: onnx.TensorProto) -> np.ndarray:
    """An initializer's values, read from its external file in `directory` (memory-mapped: only the pages read
    are loaded). The file must lie in the directory itself: a graph naming ../anything is refused."""
    kv = {e.key: e.value for e in t.external_data}
    path = (directory / kv.get("location", "")).resolve()
    if path.parent != directory.resolve() or not path.is_file():
        raise ArtifactError(f"{t.name}: external data {kv.get('location')!r} is not a file of {directory}")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    count = int(np.prod(t.dims, dtype=np.int64))
    offset, length = int(kv.get("offset", 0)), int(kv.get("length", count * dtype.itemsize))
    if length != count * dtype.itemsize or offset < 0 or offset + length > path.stat().st_size:
        raise ArtifactError(f"{t.name}: its external data ({offset}+{length} bytes) does not fit {path.name}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(t.dims))


def _array(directory: Path, t: onnx.TensorProto) -> np.ndarray:
    return external_array(directory, t) if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)


def _derivable(node: onnx.NodeProto, attrs: dict, inits: dict) -> bool:
    """A 4-bit MatMulNBits with constant B and scales, integer zero points or none, no g_idx and no bias."""
    ins = [*node.input, "", "", ""]
    return (node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and attrs.get("bits", 4) == 4
            and ins[1] in inits and ins[2] in inits and not ins[4] and not ins[5]
            and (not ins[3] or (ins[3] in inits and inits[ins[3]].data_type == onnx.TensorProto.UINT8)))


DERIVED_FILE = "derived-at-load.bin"  # the external file the derived weights are declared in (never written)
ALIGN = 64


@dataclass
class PromptGraph:
    """The prompt graph with int8 weights derived at load, and the contents of every external file it reads:
    the derived weights' (one buffer, never written to disk) and the artifact's own (memory-mapped). They go to
    onnxruntime with the session options (`SessionOptions.add_external_initializers_from_files_in_memory`),
    which copies what it needs, so they can be dropped once the session is open."""

    model: onnx.ModelProto
    files: dict[str, np.ndarray]  # external file name -> its bytes (uint8)
    derived: int  # linears moved from MatMulNBits to the int8 GEMM

    @property
    def weight_bytes(self) -> int:
        return int(self.files[DERIVED_FILE].nbytes)


def int8_prompt_model(path: Path, threads: int | None = None) -> PromptGraph | None:
    """prefill.onnx with every derivable 4-bit MatMulNBits (`_derivable`) replaced by `qgemm_nodes` over
    `derive_int8`'s weights (derived by `threads` workers; numpy releases the GIL); None when it has none (an
    int8 artifact, `--prefill-weights int8`)."""
    directory = path.parent
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    nodes, jobs, declared, dead, shapes, offset = [], [], [], set(), set(), 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not _derivable(node, attrs, inits):
            nodes.append(node)
            continue
        n_out, k, block = attrs["N"], attrs["K"], attrs["block_size"]
        ins = [*node.input, ""]
        qname, sname = f"{ins[1]}_P8", f"{ins[1]}_P8_scales"
        (q_at, s_at), offset = (offset, _aligned(offset + n_out * k)), _aligned(_aligned(offset + n_out * k) + 4 * n_out)
        declared += [_external_declaration(qname, onnx.TensorProto.INT8, (n_out, k), q_at),
                     _external_declaration(sname, onnx.TensorProto.FLOAT, (n_out,), s_at)]
        jobs.append((ins, n_out, k, block, q_at, s_at))
        dead.update(x for x in ins[1:4] if x)
        shapes.add((k, n_out))
        nodes += qgemm_nodes(node.name, node.input[0], node.output[0], qname, sname, k, n_out)
    if not jobs:
        return None
    derived = np.empty(offset, np.uint8)

    def derive(job) -> None:
        ins, n_out, k, block, q_at, s_at = job
        zp = _array(directory, inits[ins[3]]) if ins[3] else None
        q, scale = derive_int8(_array(directory, inits[ins[1]]), _array(directory, inits[ins[2]]), zp, n_out, k, block)
        derived[q_at:q_at + q.nbytes] = q.view(np.uint8).reshape(-1)
        derived[s_at:s_at + scale.nbytes] = scale.view(np.uint8)

    with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1)) as pool:
        list(pool.map(derive, jobs))  # list(): a worker's exception surfaces here
    still_read = {x for node in nodes for x in node.input}
    kept = [t for t in model.graph.initializer if t.name not in dead or t.name in still_read]
    present = {t.name for t in kept}
    constants = {**INT8_CONSTANTS, **{c: v for k, n_out in shapes for c, v in _constants(k, n_out).items()}}
    kept += [numpy_helper.from_array(np.asarray(v), c) for c, v in constants.items() if c not in present]
    files = {DERIVED_FILE: derived, **{name: _mapped(directory, name) for name in _locations(kept)}}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + declared)
    return PromptGraph(model, files, len(jobs))


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _locations(tensors: list[onnx.TensorProto]) -> set[str]:
    return {e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}


def _mapped(directory: Path, name: str) -> np.ndarray:
    """A file of the artifact directory, memory-mapped (a location outside it is refused)."""
    path = (directory / name).resolve()
    if path.parent != directory.resolve() or not path.is_file():
        raise ArtifactError(f"the prompt graph's external data {name!r} is not a file of {directory}")
    return np.memmap(path, dtype=np.uint8, mode="r")


def _external_declaration(name: str, dtype: int, shape: tuple[int, ...], offset: int) -> onnx.TensorProto:
    """An initializer declared in DERIVED_FILE at `offset` (its values come with the session options)."""
    t = onnx.TensorProto(name=name, data_type=dtype, dims=shape, data_location=onnx.TensorProto.EXTERNAL)
    length = int(np.prod(shape)) * onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize
    for key, value in (("location", DERIVED_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t
