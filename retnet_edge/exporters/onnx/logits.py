"""`logits_to_keep`: the prompt graph computes the LM head only for the positions a caller asks for.

A prompt of T tokens needs the logits of its last position only to generate (the next token), but every
position's to score a text (`eval`, the gate). The LM head is a [d_model x vocab] matmul per position (on
`small`, 32.8M of the ~270M multiply-adds per token; issue 11's profile: ~10 % of a prompt), so computing it
for one position instead of T is a free share of time to first token. onnxruntime runs every node of a
graph whatever outputs a run asks for, so the choice has to be an input:

    logits_to_keep  int64 [1], default 0 (an initializer: callers that do not feed it get every position)
    hidden [B, T, D] -> Slice(starts = -logits_to_keep, axes = [1]) -> [B, k, D] -> LM head -> logits [B, k, V]

(-0 = 0 keeps all T; 1 keeps the last.) The name and meaning follow Hugging Face's `logits_to_keep`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...contract import LOGITS_TO_KEEP
from ...errors import ExportError

LM_HEAD_PREFIX = "/model/lm_head/"  # `trace.name_nodes` names the LM head's nodes so; quantizing keeps the prefix


def add_logits_to_keep(model: onnx.ModelProto) -> None:
    """Slice the LM head's input to its last `logits_to_keep` positions (in place; see the module docstring)."""
    g = model.graph
    head = [n for n in g.node if n.name.startswith(LM_HEAD_PREFIX)]
    produced = {o for n in head for o in n.output}
    weights = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    sources = {x for n in head for x in n.input if x and x not in produced and x not in weights}
    if len(sources) != 1:
        raise ExportError(f"cannot find the LM head's input in the prompt graph ({sorted(sources)[:4]})")
    (hidden,) = sources
    neg, sliced = f"{LOGITS_TO_KEEP}/neg", f"{LOGITS_TO_KEEP}/hidden"
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), LOGITS_TO_KEEP),
                          numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{LOGITS_TO_KEEP}/end"),
                          numpy_helper.from_array(np.array([1], np.int64), f"{LOGITS_TO_KEEP}/axis")])
    g.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    first = min(i for i, n in enumerate(g.node) if n.name.startswith(LM_HEAD_PREFIX))
    new = [helper.make_node("Neg", [LOGITS_TO_KEEP], [neg], name=f"/model/{LOGITS_TO_KEEP}/Neg"),
           helper.make_node("Slice", [hidden, neg, f"{LOGITS_TO_KEEP}/end", f"{LOGITS_TO_KEEP}/axis"], [sliced],
                            name=f"/model/{LOGITS_TO_KEEP}/Slice")]
    for n in head:
        n.input[:] = [sliced if x == hidden else x for x in n.input]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:first] + new + nodes[first:])
