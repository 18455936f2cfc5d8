"""ONNX quantization: MatMulNBits int8/int4 on the demo model (op counts, head precision, perplexity), int4 embedding."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest

from retnet_edge.evaluate import evaluate_text
from retnet_edge.exporters import export_model
from retnet_edge.loader import DEMO_DIR
from retnet_edge.quant import QuantConfig
from retnet_edge.runtimes import load_runner
from retnet_edge.tokenizer import load_tokenizer


@pytest.mark.parametrize("quant, head, max_ppl_increase", [("int8", "Q8", 0.01), ("int4", "Q8", 0.05)])
def test_quantized_demo(demo_export, quant, head, max_ppl_increase):
    art = demo_export("onnx", quant)
    m = onnx.load(str(art.path / "model.onnx"))
    ops = Counter(n.op_type for n in m.graph.node)
    L = art.manifest["config"]["n_layers"]
    assert ops["MatMulNBits"] == 8 * L + 1  # q k v g out, fc1 gate fc2 per layer, + lm_head
    assert ops["MatMul"] == 2 * L  # the two state products per layer stay fp32
    fused = Counter(n.op_type for n in onnx.load(str(art.path / "model_fused.onnx")).graph.node)
    assert fused["MatMulNBits"] == 8 * L + 1 and fused["MatMul"] == 0 and fused["LinearAttention"] == L
    assert any(n.name == f"/model/lm_head/MatMul_{head}" for n in m.graph.node)
    v = art.manifest["validation"]
    assert v["passed"] and min(c["top1"] for c in v["checks"]) >= QuantConfig(quant).tolerance.min_top1
    text, tok = (DEMO_DIR / "heldout.txt").read_text(), load_tokenizer(DEMO_DIR)
    q = evaluate_text(load_runner(art.path), tok, text, max_tokens=2048)["perplexity"]
    ref = evaluate_text(load_runner("demo"), tok, text, max_tokens=2048)["perplexity"]
    assert q <= ref * (1 + max_ppl_increase), (q, ref)


def test_quantized_embedding_uses_gather_block_quantized(tmp_path):
    art = export_model("demo", "onnx", QuantConfig("int4", embedding="int4"), tmp_path / "e", steps=64)
    m = onnx.load(str(art.path / "model.onnx"))
    assert any(n.op_type == "GatherBlockQuantized" for n in m.graph.node)
    assert not any(n.op_type == "Gather" and n.name.startswith("/model/embed/") for n in m.graph.node)
    assert art.manifest["files"]["weights.bin"]["bytes"] < 12 * 2**20  # vs 16.1 MiB with an fp32 embedding
