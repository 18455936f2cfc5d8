"""The step module exports with torch.export as a static graph with no position-dependent op."""
from __future__ import annotations

import torch
from helpers import make_model
from torch import nn

from retnet_edge import to_recurrent
from retnet_edge.core.graph_check import export_step, position_dependent_nodes


def test_step_exports_static_and_matches_eager():
    model = make_model(rotary="torchscale")
    step = to_recurrent(model)
    ep = export_step(step, batch_size=2)
    assert position_dependent_nodes(ep) == []
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.bmm.default" in ops
    state = step.init_state(2)
    ids = torch.randint(0, 101, (2, 1))
    for pos in (0, 5, 100000):  # same graph at any position
        p = torch.full((2, 1), pos)
        ref = step(ids, p, *state)
        got = ep.module()(ids, p, *state)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, atol=1e-6)


def test_step_io_contract():
    model = make_model(n_layers=3)
    step = to_recurrent(model)
    state = step.init_state(4)
    assert len(state) == 3 and all(s.shape == (4, 4, 16, 32) and s.dtype == torch.float32 for s in state)
    assert all((s == 0).all() for s in state)
    logits, *present = step(torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), *state)
    assert logits.shape == (4, 1, 101) and len(present) == 3


class _BadStep(nn.Module):
    """A deliberately wrong step: it recomputes γ^t for t < pos (work and shapes grow with the position)."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.init_state = step.init_state

    def forward(self, input_ids, position_ids, *past):
        n = position_ids.max().item() + 1
        torch._check(n >= 1)
        decay_sum = torch.exp(torch.arange(n).float() * -0.03).sum()
        logits, *present = self.step(input_ids, position_ids, *past)
        return (logits * decay_sum, *present)


def test_graph_check_catches_a_position_dependent_step():
    bad = _BadStep(to_recurrent(make_model()))
    ep = export_step(bad, batch_size=1)
    found = position_dependent_nodes(ep)
    assert found, "the guard must flag an op whose size depends on the position"
    assert any("arange" in f or "symbolic" in f or "item" in f for f in found)
