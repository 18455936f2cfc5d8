"""The generic validation gate, on fake candidates: exact passes, a small logit error or a lost state fails."""
from __future__ import annotations

import numpy as np

from helpers import make_model
from retnet_edge.exporters.validate import validate
from retnet_edge.quant import QuantConfig
from retnet_edge.runtimes.eager import EagerSession
from retnet_edge.step import to_recurrent


class Perturbed(EagerSession):
    """The eager session with a relative logit error, or with its state dropped between steps."""

    def __init__(self, step, rel: float = 0.0, drop_state: bool = False):
        super().__init__(step)
        self.rel, self.drop_state = rel, drop_state

    def run_step(self, ids, pos, state):
        if self.drop_state:
            state = self.init_state(ids.shape[0])
        logits, state = super().run_step(ids, pos, state)
        return logits * (1 + self.rel), state


def test_gate_passes_exact_and_fails_small_errors():
    step = to_recurrent(make_model(std=0.08))
    ref = EagerSession(step)
    ok = validate(ref, EagerSession(step), QuantConfig("fp32"), 101, steps=24)
    assert ok.passed and ok.noise_floor < 5e-6  # the limit stays near 1e-5 for such a model
    bad = validate(ref, Perturbed(step, rel=1e-4), QuantConfig("fp32"), 101, steps=24)
    assert not bad.passed and "logits max rel diff" in bad.failures[0] and "noise floor" in bad.failures[0]


def test_gate_catches_a_lost_state_even_for_int4():
    step = to_recurrent(make_model(std=0.08))
    bad = validate(EagerSession(step), Perturbed(step, drop_state=True), QuantConfig("int4"), 101, steps=24)
    assert not bad.passed
    c = bad.checks[0]
    assert c.kl > 0.1 and c.top1 < 0.75 and np.isfinite(c.kl)


def test_gate_fails_non_finite_logits():
    """NaN compares False against every limit: the gate must fail it, not pass it (issue 14)."""
    import torch

    model = make_model(std=0.08)
    with torch.no_grad():
        model.layers[0].ffn.fc1.weight[0, 0] = float("nan")
    step = to_recurrent(model)
    report = validate(EagerSession(step), EagerSession(step), QuantConfig("fp32"), 101, steps=8)
    assert not report.passed and "non-finite logits" in report.failures[0]
    assert report.to_dict()["checks"][0]["finite"] is False
