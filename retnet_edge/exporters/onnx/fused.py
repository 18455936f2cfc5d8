"""The ONNX step graph's fused state update: eq. 6 as ONE LinearAttention node per layer.

`gated_state_step` is a torch custom op whose eager body is the paper's update (`retention.state_chain`);
torch.onnx translates it (`linear_attention`) into a `LinearAttention` node (update_rule "gated", scale 1,
log-decay), which reads S once and writes S' once instead of the four passes of MatMul/Mul/Add/MatMul —
and, bound to one buffer, updates it in place. `FusedStepCore` is the step core that calls it;
`model_fused.onnx` is traced from `step.with_core(FusedStepCore)`.

The node is the standard ai.onnx `LinearAttention` of opset 27 (onnx 1.23) wherever the installed
onnxruntime has a kernel for it (`standard_op_available`); otherwise (onnxruntime up to 1.32 at least,
which runs the standard op only by inlining its function body, ~1.5x slower) the export keeps onnxruntime's
`com.microsoft` op of the same signature and meaning, which 1.25+ runs with its kernel; `to_standard_op`
converts one into the other. A runtime that can load neither decodes with model.onnx (the MatMul chain).
"""
from __future__ import annotations

import onnx
import torch
from torch import Tensor

from ...contract import FUSED_STATE_OP, STANDARD_STATE_OP_OPSET
from ...core.retention import StepCore, state_chain


@torch.library.custom_op("retnet_edge::gated_state_step", mutates_args=())
def gated_state_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor,
                     heads: int) -> tuple[Tensor, Tensor]:
    """Eq. 6 as one op, in onnxruntime's `com.microsoft::LinearAttention` (update_rule "gated", scale 1)
    layout: q, k [B, 1, H*Dk], v [B, 1, H*Dv], state [B, H, Dk, Dv], log_decay [B, 1, H] (log γ), H ->
    (o [B, 1, H*Dv], state' = γ·state + kᵀv). The ONNX step graph exports it as that one node, which
    reads and writes S once instead of the four passes of MatMul/Mul/Add/MatMul (exporters/onnx/);
    this body is its eager meaning, used by nothing else."""
    B, H, Dk, Dv = state.shape
    o, new = state_chain(q.reshape(B, 1, H, Dk), k.reshape(B, 1, H, Dk), v.reshape(B, 1, H, Dv), state,
                          log_decay.reshape(B, H, 1, 1).exp())
    return o.reshape(B, 1, H * Dv), new


@gated_state_step.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    B, H, Dk, Dv = state.shape
    return q.new_empty(B, 1, H * Dv), torch.empty_like(state)



class FusedStepCore(StepCore):
    """`StepCore` whose state update is one `gated_state_step` (the ONNX step graph's LinearAttention)."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
        B, _, H, Dk = q.shape
        Dv = v.shape[-1]
        log_decay = self.log_gamma.view(1, 1, H).expand(B, 1, H)
        o, S = gated_state_step(q.reshape(B, 1, H * Dk), k.reshape(B, 1, H * Dk), v.reshape(B, 1, H * Dv), S,
                                 log_decay, H)
        o = o.view(B, 1, H, Dv)
        if self.out_scale is not None:
            o = o * self.out_scale.view(B, 1, H, 1)
        return o, S


def linear_attention(q, k, v, state, log_decay, heads: int):
    """retention.gated_state_step as onnxruntime's contrib op: one node reads S once and writes S' once."""
    import onnxscript  # with torch.onnx's exporter, which needs it anyway

    register_fused_state_schema()
    op = onnxscript.values.Opset(FUSED_STATE_OP[0], 1)[FUSED_STATE_OP[1]]
    return op(q, k, v, state, log_decay, q_num_heads=heads, kv_num_heads=heads, scale=1.0, update_rule="gated")


def register_fused_state_schema() -> None:
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




def standard_op_available() -> bool:
    """The installed onnx defines ai.onnx LinearAttention (opset 27) AND the installed onnxruntime has a CPU
    kernel registered for it. onnxruntime 1.32 loads the standard op but has no kernel: it inlines the op's
    function body (a Scan over the sequence), measured 2.6-3.2 ms/token on the demo at int8 against 1.9 ms
    with the com.microsoft kernel of the same meaning. So the export writes the standard node only where
    it runs as fast as the contrib one, and the contrib node (onnxruntime 1.25+) otherwise."""
    try:
        onnx.defs.get_schema(FUSED_STATE_OP[1], STANDARD_STATE_OP_OPSET, "")
        from onnxruntime.capi import _pybind_state as ort_c  # the kernel registry (no public accessor)

        kernels = ort_c.get_all_opkernel_def()
    except (onnx.defs.SchemaError, ImportError, AttributeError):
        return False
    return any(k.op_name == FUSED_STATE_OP[1] and k.domain in ("", "ai.onnx") for k in kernels)


def to_standard_op(model: onnx.ModelProto) -> None:
    """Make the graph's contrib LinearAttention nodes the ai.onnx op (same inputs, attributes and meaning) and
    import opset 27 (in place; a graph without the node is left as it is)."""
    domain, name = FUSED_STATE_OP
    nodes = [n for n in model.graph.node if n.op_type == name and n.domain == domain]
    if not nodes:
        return
    for n in nodes:
        n.domain = ""
    still = any(n.domain == domain for n in model.graph.node)
    imports = [o for o in model.opset_import if o.domain not in ("", "ai.onnx") and (still or o.domain != domain)]
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", STANDARD_STATE_OP_OPSET), *imports])
