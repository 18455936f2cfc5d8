"""`verify`: per-layer state differences that show where an artifact or a form leaves the reference."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from retnet_edge.cli import main
from retnet_edge.contract import SessionDefaults
from retnet_edge.core.step import to_recurrent
from retnet_edge.exporters.divergence import default_positions, state_divergence
from retnet_edge.exporters.validate import SessionReference
from retnet_edge.runtimes.eager import EagerSession


def test_default_positions():
    assert default_positions(64) == [1, 4, 16, 64] and default_positions(100) == [1, 4, 16, 64, 100]


def test_verify_prints_per_layer_state_differences_of_an_artifact(tiny_onnx):
    _, art = tiny_onnx
    res = CliRunner().invoke(main, ["verify", str(art.path), "--steps", "16", "--positions", "1,8,16", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    table = doc["state_divergence"]
    assert table["positions"] == [1, 8, 16] and len(table["relative_difference"]) == 3  # 3 layers
    assert max(max(row) for row in table["relative_difference"]) < 1e-5  # fp32 ONNX = eager
    assert table["first_divergence"] is None
    assert "layer" in res.stderr and "no layer differs" in res.stderr


class LosesState(SessionDefaults):
    """An eager session whose state hand-off drops layer 1's state from position 8 on: a 'lost state' bug."""

    def __init__(self, inner: EagerSession):
        self.inner, self.cfg = inner, inner.cfg

    def init_state(self, b):
        return self.inner.init_state(b)

    def run_step(self, ids, pos, state):
        if int(pos[0, 0]) == 8:
            state = [s if i != 1 else np.zeros_like(s) for i, s in enumerate(state)]
        return self.inner.run_step(ids, pos, state)


def test_a_lost_state_is_located_by_layer_and_position(tiny_model):
    ref = EagerSession(to_recurrent(tiny_model))
    ids = np.random.default_rng(0).integers(0, tiny_model.cfg.vocab_size, (1, 16))
    table = state_divergence(SessionReference(ref), LosesState(EagerSession(to_recurrent(tiny_model))), ids, [4, 8, 12, 16])
    assert table.first_divergence() == (1, 12)  # layer 1, first seen after 12 tokens; 0 and 2 later/never
    assert max(table.rel[1][:2]) < 1e-6 and table.rel[1][2] > 0.1


def test_verify_forms_passes_a_healthy_model_and_locates_a_broken_chunk_form(saved_tiny, monkeypatch):
    res = CliRunner().invoke(main, ["verify", str(saved_tiny), "--forms", "--steps", "48", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] and max(doc["logits_max_rel"].values()) < 1e-4
    assert [t["first_divergence"] for t in doc["tables"]] == [None, None, None]

    from retnet_edge.core import retention

    original = retention.chunk_retention

    def leaky(q, k, v, log_gamma, state):  # a chunk kernel that loses 10 % of the state it hands on
        o, s = original(q, k, v, log_gamma, state)
        return o, 0.9 * s

    monkeypatch.setattr(retention, "chunk_retention", leaky)
    res = CliRunner().invoke(main, ["verify", str(saved_tiny), "--forms", "--steps", "48", "--json"])
    assert res.exit_code == 3 and "forms of" in res.stderr
    par = next(t for t in json.loads(res.stdout)["tables"] if "parallel" in t["what"])
    chk = next(t for t in json.loads(res.stdout)["tables"] if "output, chunkwise" in t["what"])
    assert par["first_divergence"] is None  # the parallel form has no chunk kernel
    assert chk["first_divergence"] == {"layer": 0, "position": 48}  # past the first chunk of 16


def test_verify_a_model_without_forms_says_what_to_do(saved_tiny):
    res = CliRunner().invoke(main, ["verify", str(saved_tiny)])
    assert res.exit_code == 1 and "--forms" in res.stderr
