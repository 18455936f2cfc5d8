"""The plan's quantizers on ONNX graphs: int4 through onnxruntime.quantization's MatMulNBits /
GatherBlockQuantized, int8 as an int8 GEMM (`int8_matmul_nodes`: MatMulInteger with 7-bit per-channel
weights, activations quantized per row at run time). The streamed export calls `quantize_matmuls` on a
one-node graph per weight, the same call a whole graph gets, so the bytes match.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ...contract.quant import INT8_QMAX_REDUCED, QuantPlan
from ...errors import ExportError
from ...runtimes.onnx_int8_graph import INT8_CONSTANTS, node_maker, row_quantize_nodes
from .trace import module_of


def int8_per_channel(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] fp32 -> (int8 [K, N], fp32 scale [N]): symmetric round-to-nearest per output column to
    [-qmax, qmax] (the rounding `fake_quant.round_weight` mirrors)."""
    amax = np.abs(w).max(axis=0)
    scale = (np.maximum(amax, 1e-12) / qmax).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


def int8_matmul_nodes(name: str, a: str, y: str, q: str, scales: str, k: int) -> list[onnx.NodeProto]:
    """y = a @ W through an int8 GEMM: a's rows quantized to 8 bits each (`onnx_int8.row_quantize_nodes`:
    symmetric, stored as uint8 around 128), MatMulInteger with W's int8 [k, N], then the int32 sums scaled by
    row scale x column scale.

    Per row, not DynamicQuantizeMatMul's per tensor: on the demo the prompt path's KL was 1.2e-2 per
    tensor (one scale for a whole chunk) against 1.2e-3 step by step, and one row's scale must not depend
    on the others (batch rows are separate sequences). The row quantization is one blocked QuantizeLinear;
    it rounds like the Div/Round/Add/Cast it replaced, bit for bit, with three nodes fewer per row
    quantization: `small` int8 decoded ~2 % faster."""
    scope = name.rsplit("/", 1)[0]
    value = lambda tag: f"{name}_Q8/{tag}"  # noqa: E731  (value names; the node of value `tag` is `{op}_{tag}_Q8`)
    n = node_maker(scope, value, "_Q8")
    out = onnx.helper.make_node("Mul", [value("row_scaled"), scales], [y], name=f"{scope}/Mul_out_Q8")
    return [*row_quantize_nodes(n, a, k),
            onnx.helper.make_node("MatMulInteger", [value("a_u8"), q, "int8.zero"], [value("acc")], name=f"{name}_Q8"),
            n("Cast", ["{acc}"], "acc_f", to=onnx.TensorProto.FLOAT),
            n("Mul", ["{acc_f}", "{rscale}"], "row_scaled"), out]


def int8_dynamic(model: onnx.ModelProto, exclude: list[str], qmax: int, codes=None) -> onnx.ModelProto:
    """Each weight MatMul not excluded -> `int8_matmul_nodes`: int8 weights per output channel, activations
    quantized per row at run time. A module with calibrated int8 codes (`exporters.gptq.QuantCodes`) gets
    them instead of round-to-nearest: the same layout, so the same kernel.

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
            q, scale = int8_per_channel(refuse_non_finite(w.name, numpy_helper.to_array(w).astype(np.float32)), qmax)
            got = codes.get(module_of(node.name), 8) if codes is not None else None
            if got is not None:
                q, scale = _int8_codes(node.name, got, q.shape, qmax)
            inits[qname], inits[sname] = numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)
        replaced.add(w.name)
        nodes += int8_matmul_nodes(node.name, node.input[0], node.output[0], qname, sname, k=int(w.dims[0]))
    if replaced:
        for cname, value in INT8_CONSTANTS.items():
            inits.setdefault(cname, numpy_helper.from_array(np.asarray(value), cname))
    still_read = {x for n in nodes for x in n.input}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [t for name, t in inits.items() if name not in replaced or name in still_read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _int8_codes(name: str, got: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], qmax: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated codes [N, K] and scales [N, 1] -> the MatMulInteger weight [K, N] and its column scales [N]."""
    q, s = got
    if q.T.shape != tuple(shape) or s.size != shape[1] or np.abs(q).max(initial=0) > qmax:
        raise ExportError(f"{name}: calibrated int8 codes {q.shape} do not fit its weight {tuple(shape)} in ±{qmax}")
    return np.ascontiguousarray(q.T).astype(np.int8), s.reshape(-1).astype(np.float32)


def int8_gather(model: onnx.ModelProto, exclude: list[str], block: int) -> onnx.ModelProto:
    """Each Gather of a 2-D table not excluded -> com.microsoft GatherBlockQuantized with bits=8: the table
    symmetric per `block` values of a row (±127, stored as uint8 around 128, the op's implicit zero point),
    one fp32 scale per block. onnxruntime.quantization's MatMulNBitsQuantizer makes only 4-bit Gathers (at 8 it
    logs an error and leaves the table fp32), so the int8 embedding is written here."""
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    skip = set(exclude)
    for idx, node in enumerate(model.graph.node):
        t = model.graph.initializer[inits[node.input[0]]] if node.op_type == "Gather" and node.input[0] in inits \
            and node.name not in skip else None
        if t is None or len(t.dims) != 2:
            continue
        table = refuse_non_finite(t.name, numpy_helper.to_array(t).astype(np.float32))  # [V, D]
        v, d = table.shape
        if d % block:
            raise ExportError(f"{node.name}: an int8 embedding needs its width ({d}) to be a multiple of the group "
                              f"size ({block})", hint="--group-size that divides it, or --embedding fp32")
        g = table.reshape(v, d // block, block)
        scales = (np.maximum(np.abs(g).max(-1), 1e-12) / 127).astype(np.float32)  # [V, D / block]
        q = (np.clip(np.rint(g / scales[..., None]), -127, 127).astype(np.int16) + 128).astype(np.uint8)
        qname, sname = f"{t.name}_Q8", f"{t.name}_scales"
        model.graph.initializer.extend([numpy_helper.from_array(q.reshape(v, d), qname),
                                        numpy_helper.from_array(scales, sname)])
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if axis != 0:
            raise ExportError(f"{node.name}: an int8 embedding gathers rows (axis 0), not axis {axis}")
        new = onnx.helper.make_node("GatherBlockQuantized", [qname, node.input[1], sname], list(node.output),
                                    name=node.name, domain="com.microsoft", gather_axis=0, quantize_axis=1,
                                    block_size=block, bits=8)
        model.graph.node[idx].CopyFrom(new)
        still = {x for n in model.graph.node for x in n.input}
        if t.name not in still:
            model.graph.initializer.remove(t)
            inits = {x.name: i for i, x in enumerate(model.graph.initializer)}
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def refuse_non_finite(name: str, a: np.ndarray) -> np.ndarray:
    """A NaN / inf weight would round to an arbitrary integer (silently, under --no-validate): refuse it."""
    if not np.isfinite(a).all():
        raise ExportError(f"weight {name.removesuffix('.T')} has NaN or inf values; cannot quantize it",
                          hint="check the checkpoint; an fp32 export keeps them as they are")
    return a


def _checkrefuse_non_finite(model: onnx.ModelProto, op_types: tuple[str, ...], exclude: list[str]) -> None:
    """`_finite` for every weight the MatMulNBits quantizer is about to round."""
    inits = {t.name: t for t in model.graph.initializer}
    skip = set(exclude)
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in skip:
            for name in node.input:
                if name in inits:
                    refuse_non_finite(name, numpy_helper.to_array(inits[name]))


def int4_config(method: str, block: int, op_types: tuple[str, ...]):
    """onnxruntime.quantization's config for `method` (contract.quant.INT4_METHODS) at 4 bits.

    rtn: symmetric blocks, no zero points, accuracy_level 4 (int8 activations in the kernel).
    hqq: HQQWeightOnlyQuantConfig as the library defines it: asymmetric, a fp32 scale and a fp32 zero point per
    block (the zero point is what HQQ optimises), and no accuracy_level (the library writes none). It has no
    Gather quantizer (`check_int4_method_target` refuses an int4 embedding with it before any export)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
    )

    if method == "hqq":  # gptq: rtn's layout, its integers and scales then replaced (`write_codes`)
        return HQQWeightOnlyQuantConfig(block_size=block, bits=4, op_types_to_quantize=op_types)
    return DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=4,
                                        op_types_to_quantize=op_types,
                                        quant_axes=(("Gather", 1),) if "Gather" in op_types else None)


def pack_int4(codes: np.ndarray, block: int) -> np.ndarray:
    """codes int8 [N, K] in [-8, 7] -> MatMulNBits' B uint8 [N, K / block, block / 2]: each value + 8 (the
    implicit zero point of a MatMulNBits without zero points), two per byte, the first in the low nibble."""
    n, k = codes.shape
    u = (codes.astype(np.int16) + 8).astype(np.uint8).reshape(n, k // block, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def write_codes(model: onnx.ModelProto, codes, block: int) -> onnx.ModelProto:
    """Each MatMulNBits whose module has calibrated integers and scales (`exporters.gptq.QuantCodes`) gets them
    in place of the quantizer's own: the same layout (symmetric, no zero points), so the same kernel runs."""
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for node in model.graph.node:
        got = codes.get(module_of(node.name), 4) if node.op_type == "MatMulNBits" else None
        if got is None:
            continue
        if len(node.input) > 3 and node.input[3]:
            raise ExportError(f"{node.name}: calibrated int4 codes need a MatMulNBits without zero points")
        q, s = got
        b_old, s_old = (model.graph.initializer[inits[x]] for x in node.input[1:3])
        b = pack_int4(q, block)
        if tuple(b_old.dims) != b.shape or int(np.prod(s_old.dims)) != s.size:
            raise ExportError(f"{node.name}: calibrated codes {q.shape} do not fit its MatMulNBits {tuple(b_old.dims)}")
        model.graph.initializer[inits[node.input[1]]].CopyFrom(numpy_helper.from_array(b, node.input[1]))
        model.graph.initializer[inits[node.input[2]]].CopyFrom(
            numpy_helper.from_array(s.astype(np.float32).reshape(tuple(s_old.dims)), node.input[2]))
    return model


def capture_weights(model: onnx.ModelProto, capture) -> None:
    """Each MatMulNBits' weight as it was written, dequantized, into `capture` (`exporters.layer_errors.Captured`)."""
    from ..layer_errors import matmulnbits_weight

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        b, scales, zero_points = (numpy_helper.to_array(inits[x]) if x else None for x in [*node.input, "", ""][1:4])
        capture.put(module_of(node.name), matmulnbits_weight(b, scales, zero_points, attrs["N"], attrs["K"],
                                                             attrs["block_size"]))


def quantize_matmuls(model: onnx.ModelProto, bits: int, block: int, exclude: list[str],
                     op_types: tuple[str, ...] = ("MatMul",), method: str = "rtn", codes=None,
                     capture=None) -> onnx.ModelProto:
    """int8 MatMuls -> an int8 GEMM with per-row activations (`int8_dynamic`); int4 MatMuls and quantized
    Gathers -> onnxruntime.quantization's MatMulNBits / GatherBlockQuantized, rounded by `method` (`int4_config`),
    or carrying `codes` (a calibrated method's integers and scales, `write_codes`) where it has them."""
    if bits == 8 and op_types == ("MatMul",):
        return int8_dynamic(model, exclude, INT8_QMAX_REDUCED, codes)  # the range Target("onnx").int8_qmax declares
    if bits == 8 and op_types == ("Gather",):
        return int8_gather(model, exclude, block)
    _checkrefuse_non_finite(model, op_types, exclude)
    # onnxruntime only when quantizing: importing the exporters (CLI choices) must not load the engine
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    if bits == 4:
        if method == "hqq" and "Gather" in op_types:
            raise ExportError("int4 method hqq cannot quantize a Gather (onnxruntime's HQQ quantizer has none)",
                              hint="--embedding int8 or fp32, or --int4-method rtn")
        cfg = int4_config(method, block, op_types)
    else:
        cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits,
                                           op_types_to_quantize=op_types,
                                           quant_axes=(("Gather", 1),) if "Gather" in op_types else None)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=exclude, algo_config=cfg)
    q.process()
    if codes is not None and bits == 4:
        return write_codes(q.model.model, codes, block)
    if capture is not None and bits == 4 and op_types == ("MatMul",):
        capture_weights(q.model.model, capture)
    return q.model.model


BITS = {"int8": 8, "int4": 4}


def quantize_onnx(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Apply a QuantPlan: each planned linear's MatMul and the embedding's Gather at their precision.

    MatMulNBitsQuantizer quantizes every eligible node of its op types that is not excluded
    (`nodes_to_include` adds to that set, it does not restrict it), so each pass excludes the rest.
    """
    for precision, bits in BITS.items():
        linears = set(plan.modules(precision))
        matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
        if any(module_of(n) in linears for n in matmuls):
            model = quantize_matmuls(model, bits, plan.group_size, method=plan.int4_method,
                                     exclude=[n for n in matmuls if module_of(n) not in linears], codes=plan.codes,
                                     capture=plan.capture)
        gathers = [n.name for n in model.graph.node if n.op_type == "Gather"]
        if plan.embedding in plan.modules(precision, kind="embedding"):
            model = quantize_matmuls(model, bits, plan.group_size, op_types=("Gather",),
                                     exclude=[n for n in gathers if module_of(n) != plan.embedding],
                                     method=plan.int4_method)
    return model


