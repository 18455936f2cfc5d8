"""Shared fixtures (helpers live in helpers.py, imported by the tests that need them)."""
from __future__ import annotations

import pytest
from helpers import make_model

from retnet_edge import RetNet, save_pretrained
from retnet_edge.contract.quant import QuantConfig


@pytest.fixture
def tiny_model() -> RetNet:
    return make_model()


@pytest.fixture
def saved_tiny(tmp_path, tiny_model):
    path = tmp_path / "tiny"
    save_pretrained(tiny_model, path)
    return path


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory):
    """export(target, scheme) -> the demo model's artifact, exported once per session (64 gate steps)."""
    from retnet_edge.exporters import export_model

    cache = {}

    def export(target: str, scheme: str):
        if (target, scheme) not in cache:
            out = tmp_path_factory.mktemp(f"demo-{target}-{scheme}") / "art"
            cache[target, scheme] = export_model("demo", target, QuantConfig(scheme), out, steps=64)
        return cache[target, scheme]

    return export


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(model, fp32 ONNX artifact) of a 3-layer torchscale-style tiny model."""
    from retnet_edge.exporters import export_model

    d = tmp_path_factory.mktemp("onnx")
    model = make_model(n_layers=3, rotary="torchscale", tie_embeddings=True, embed_scale=8.0)
    save_pretrained(model, d / "model")
    return model, export_model(str(d / "model"), "onnx", QuantConfig("fp32"), d / "art")
