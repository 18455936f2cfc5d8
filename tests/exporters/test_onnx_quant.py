"""ONNX quantization on the demo model: int8 = MatMulInteger (7-bit per-channel weights, activations per row),
int4 = MatMulNBits (op counts, head precision, perplexity), batch independence, int4 embedding."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest

from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.checkpoints.loader import DEMO_DIR
from retnet_edge.contract.quant import QuantConfig
from retnet_edge.exporters import export_model
from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.evaluate import evaluate_text


@pytest.mark.parametrize("quant, body, max_ppl_increase", [("int8", "MatMulInteger", 0.01), ("int4", "MatMulNBits", 0.05)])
def test_quantized_demo(demo_export, quant, body, max_ppl_increase):
    art = demo_export("onnx", quant)
    m = onnx.load(str(art.path / "model.onnx"))
    L = art.manifest.config.n_layers
    for graph, state_matmuls in (("model.onnx", 2 * L), ("model_fused.onnx", 0), ("prefill.onnx", None)):
        ops = Counter(n.op_type for n in onnx.load(str(art.path / graph)).graph.node)
        assert ops[body] == 8 * L + (quant == "int8")  # q k v g out, fc1 gate fc2 per layer (+ the head)
        assert ops["MatMulInteger"] == 8 * L * (quant == "int8") + 1  # the int8 head is always an int8 GEMM
        if state_matmuls is not None:
            assert ops["MatMul"] == state_matmuls  # the state products stay fp32
    assert any(n.name == "/model/lm_head/MatMul_Q8" and n.op_type == "MatMulInteger" for n in m.graph.node)
    # 7-bit weights: a u8 x s8 pair sum fits 16 bits, so AVX2 without VNNI does not saturate
    q8 = [t for t in m.graph.initializer if t.name.endswith("_Q8") and t.data_type == onnx.TensorProto.INT8]
    onnx.load_external_data_for_model(m, str(art.path))
    assert q8 and max(int(abs(onnx.numpy_helper.to_array(t).astype(int)).max()) for t in q8) <= 64
    v = art.manifest.validation
    assert v["passed"] and min(c["top1"] for c in v["checks"]) >= QuantConfig(quant).tolerance.min_top1
    text, tok = (DEMO_DIR / "heldout.txt").read_text(), load_tokenizer(DEMO_DIR)
    q = evaluate_text(load_runner(art.path), tok, text, max_tokens=2048)["perplexity"]
    ref = evaluate_text(load_runner("demo"), tok, text, max_tokens=2048)["perplexity"]
    assert q <= ref * (1 + max_ppl_increase), (q, ref)


def test_int8_rows_are_quantized_independently(demo_export):
    """A batch row's logits do not depend on the other rows (activations are quantized per row, not per
    tensor, where the other row's largest activation would set this row's scale too): the same sequence
    alone and beside another."""
    import numpy as np
    import onnxruntime as ort

    art = demo_export("onnx", "int8")
    sess = ort.InferenceSession(str(art.path / "prefill.onnx"), providers=["CPUExecutionProvider"])
    cfg = art.manifest.config.to_dict()
    H, dk = cfg["n_heads"], cfg["d_model"] // cfg["n_heads"]
    dv = cfg["value_dim"] // H

    def run(ids):
        B, T = ids.shape
        feeds = {"input_ids": ids, "position_ids": np.broadcast_to(np.arange(T), (B, T)).copy()}
        for i in range(cfg["n_layers"]):
            feeds[f"past.{i}.recurrent"] = np.zeros((B, H, dk, dv), np.float32)
        return sess.run(["logits"], feeds)[0]

    ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], (1, 24))
    alone = run(ids)
    other = np.random.default_rng(1).integers(3, cfg["vocab_size"], (1, 24))
    together = run(np.concatenate([ids, other]))
    np.testing.assert_array_equal(alone[0], together[0])
    assert np.abs(together[1] - alone[0]).max() > 1.0  # the other row is really another sequence


def test_prefill_weights_int8_gives_the_prompt_graph_int8_copies(demo_export, tmp_path):
    art = export_model("demo", "onnx", QuantConfig("int4", prefill_weights="int8"), tmp_path / "pw", steps=64)
    L = art.manifest.config.n_layers
    step = Counter(n.op_type for n in onnx.load(str(art.path / "model.onnx")).graph.node)
    prompt = Counter(n.op_type for n in onnx.load(str(art.path / "prefill.onnx")).graph.node)
    assert step["MatMulNBits"] == 8 * L and step["MatMulInteger"] == 1  # decode: int4 body, int8 head
    assert prompt["MatMulNBits"] == 0 and prompt["MatMulInteger"] == 8 * L + 1
    assert art.manifest.quant.prefill_weights == "int8"
    plain = demo_export("onnx", "int4")
    extra = art.manifest.files["weights.bin"].bytes - plain.manifest.files["weights.bin"].bytes
    body = sum(m * n for m, n in _body_shapes(art.manifest.config.to_dict())) * L
    assert body <= extra <= body * 1.1  # one int8 byte per body weight (+ scales); the head is shared
    checks = {c["name"]: c for c in art.manifest.validation["checks"]}
    assert checks["prefill 48 + step x16 (batch 1)"]["kl"] < checks["step x64 (batch 1)"]["kl"]  # int8 < int4


def _body_shapes(cfg: dict) -> list[tuple[int, int]]:
    d, dv, f = cfg["d_model"], cfg["value_dim"], cfg["ffn_dim"]
    return [(d, d), (d, d), (d, dv), (d, dv), (dv, d), (d, f), (d, f), (f, d)]  # q k v g out, fc1 gate fc2


@pytest.mark.parametrize("args, message", [
    (["--quant", "int8", "--prefill-weights", "int8"], "is for --quant int4"),
    (["--target", "executorch", "--quant", "int4", "--prefill-weights", "int8"], "not offered by the executorch"),
    (["--quant", "int4", "--flavor", "genai", "--prefill-weights", "int8"], "separate prompt graph"),
])
def test_prefill_weights_refusals(tmp_path, args, message):
    from click.testing import CliRunner

    from retnet_edge.cli import main

    res = CliRunner().invoke(main, ["export", "demo", "--target", "onnx", *args, "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and message in res.output and not (tmp_path / "x").exists(), res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("embedding, bits, below_mib", [("int4", 4, 12), ("int8", 8, 13)])
def test_quantized_embedding_uses_gather_block_quantized(tmp_path, embedding, bits, below_mib):
    """int4 through onnxruntime's quantizer; int8 written by `int8_gather` (the quantizer makes only 4-bit
    Gathers: at 8 it logged an error and left the table fp32 under a manifest saying int8)."""
    art = export_model("demo", "onnx", QuantConfig("int4", embedding=embedding), tmp_path / "e", steps=64)
    m = onnx.load(str(art.path / "model.onnx"), load_external_data=False)
    gbq = [n for n in m.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gbq) == 1 and {a.name: onnx.helper.get_attribute_value(a) for a in gbq[0].attribute}.get("bits", 4) == bits
    assert not any(n.op_type == "Gather" and n.name.startswith("/model/embed/") for n in m.graph.node)
    assert art.manifest.validated and art.manifest.files["weights.bin"].bytes < below_mib * 2**20  # fp32 embed: 16.1


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_a_nan_weight_is_refused_before_rounding(tmp_path, quant):
    """Rounding a NaN gives an arbitrary integer: even under --no-validate the export stops, one line, exit 1."""
    import torch
    from click.testing import CliRunner
    from helpers import make_model

    from retnet_edge import save_pretrained
    from retnet_edge.cli import main

    model = make_model(n_layers=2)
    with torch.no_grad():
        model.layers[1].retention.v_proj.weight[3, 5] = float("nan")
    save_pretrained(model, tmp_path / "m")
    res = CliRunner().invoke(main, ["export", str(tmp_path / "m"), "--target", "onnx", "--quant", quant,
                                    "--no-validate", "-o", str(tmp_path / "x")])
    assert res.exit_code == 1, res.output
    assert "layers.1.retention.v_proj.weight has NaN or inf values" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*"))

