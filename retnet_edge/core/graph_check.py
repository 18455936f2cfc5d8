"""Static-graph guard for exported step modules: nothing may depend on the position.

Used by tests and by exporters before they write an artifact. A graph passes when every node's output
shape is a concrete integer tuple (no symbolic size that could come from a position), no control-flow
higher-order op is present, and no tensor is turned into a Python scalar (`.item()`).
"""
from __future__ import annotations

import torch

FORBIDDEN_TARGETS = ("cond", "while_loop", "map_impl", "scan", "_local_scalar_dense", "item",
                     "nonzero", "masked_select", "repeat_interleave", "arange")


def _target_name(node: torch.fx.Node) -> str:
    t = node.target  # aten overloads carry the bare op name in _opname; higher-order ops in __name__
    return getattr(t, "_opname", None) or getattr(t, "__name__", None) or str(t)


def _concrete(val) -> bool:
    if isinstance(val, torch.Tensor):
        return all(isinstance(d, int) for d in val.shape)
    if isinstance(val, (list, tuple)):
        return all(_concrete(v) for v in val)
    if isinstance(val, torch.SymInt):
        return False
    return True


def position_dependent_nodes(ep: torch.export.ExportedProgram) -> list[str]:
    """Names of nodes in an exported program that break the constant-cost step contract."""
    bad = []
    for node in ep.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = _target_name(node)
        if name in FORBIDDEN_TARGETS:
            bad.append(f"{node.name} ({name}: forbidden op)")
        elif not _concrete(node.meta.get("val")):
            bad.append(f"{node.name} ({name}: symbolic output shape)")
    return bad


def export_step(step: torch.nn.Module, batch_size: int = 1) -> torch.export.ExportedProgram:
    """torch.export the step with static shapes on example inputs of the given batch size."""
    B = batch_size
    args = (torch.zeros(B, 1, dtype=torch.long), torch.zeros(B, 1, dtype=torch.long), *step.init_state(B))
    with torch.no_grad():
        return torch.export.export(step, args, strict=False)
