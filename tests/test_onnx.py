"""ONNX export: the I/O contract, metadata, graph guard, quantization, validation gate, runner."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import retnet_edge
from conftest import make_model
from retnet_edge.cli import main
from retnet_edge.exporters import export_model
from retnet_edge.exporters.onnx import position_dependent_nodes
from retnet_edge.quant import QuantConfig
from retnet_edge.runtimes import load_runner


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    model = make_model(n_layers=3, rotary="torchscale", tie_embeddings=True, embed_scale=8.0)
    model.save_pretrained(d / "model")
    art = export_model(str(d / "model"), "onnx", QuantConfig("fp32"), d / "art")
    return model, art


def test_io_contract_and_metadata(tiny_artifact):
    model, art = tiny_artifact
    cfg = model.cfg
    for fname, seq in (("model.onnx", 1), ("prefill.onnx", "sequence")):
        m = onnx.load(str(art.path / fname))
        ins = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
        assert list(ins) == ["input_ids", "position_ids", "past.0.recurrent", "past.1.recurrent", "past.2.recurrent"]
        assert list(outs) == ["logits", "present.0.recurrent", "present.1.recurrent", "present.2.recurrent"]
        assert ins["input_ids"] == ["batch", seq] and ins["position_ids"] == ["batch", seq]
        assert ins["past.1.recurrent"] == ["batch", 4, 16, 32] == outs["present.1.recurrent"]
        assert outs["logits"] == ["batch", seq, cfg.vocab_size]
        types = {i.name: i.type.tensor_type.elem_type for i in m.graph.input}
        assert types["input_ids"] == onnx.TensorProto.INT64 and types["past.0.recurrent"] == onnx.TensorProto.FLOAT
        meta = {p.key: p.value for p in m.metadata_props}
        assert retnet_edge.RetNetConfig.from_dict(json.loads(meta["retnet_edge.config"])) == cfg
        assert json.loads(meta["retnet_edge.quant"])["scheme"] == "fp32"
        assert "d_k in half-split" in meta["retnet_edge.state_layout"]
        assert {"bos_id", "eos_id", "tokenizer", "retnet_edge.version"} <= set(meta)
    step = onnx.load(str(art.path / "model.onnx"))
    assert position_dependent_nodes(step) == []
    assert not {"Loop", "If", "Scan", "Range"} & {n.op_type for n in step.graph.node}
    assert any(n.name.startswith("/model/layers.0.retention.q_proj/") for n in step.graph.node)
    prefill = onnx.load(str(art.path / "prefill.onnx"))
    assert position_dependent_nodes(prefill)  # the guard does see a sequence-dependent graph


def test_graphs_share_one_weights_file(tiny_artifact):
    """Each weight is stored once although both graphs use it."""
    model, art = tiny_artifact
    weights = (art.path / "weights.bin").stat().st_size
    assert weights < 1.1 * 4 * model.num_parameters()
    total = sum((art.path / f).stat().st_size for f in ("model.onnx", "prefill.onnx", "weights.bin"))
    assert total < 1.3 * weights  # two self-contained graphs would be >= 2x


def test_manifest_lists_files_and_validation(tiny_artifact):
    _, art = tiny_artifact
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["target"] == "onnx" and set(m["files"]) == {"model.onnx", "prefill.onnx", "weights.bin"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["validation"]["passed"] and len(m["validation"]["checks"]) == 4
    assert max(c["max_rel"] for c in m["validation"]["checks"]) <= 1e-5


def test_runner_matches_eager_and_state_files(tiny_artifact, tmp_path):
    model, art = tiny_artifact
    runner = load_runner(art.path)
    ids = torch.randint(0, 101, (1, 40)).tolist()[0]
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    got = np.concatenate([runner.prefill(ids[:30]), np.stack([runner.step(t) for t in ids[30:]])])
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
    runner.save_state(tmp_path / "s")
    assert (tmp_path / "s").stat().st_size < 4 * 3 * 4 * 16 * 32 + 2048  # O(1): the state alone
    nxt = runner.step(5)
    runner.reset()
    runner.load_state(tmp_path / "s")
    np.testing.assert_array_equal(runner.step(5), nxt)


def test_inspect_artifact(tiny_artifact):
    _, art = tiny_artifact
    res = CliRunner().invoke(main, ["inspect", str(art.path), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["format"] == "artifact (onnx)" and r["artifact"]["validation_passed"]
    assert set(r["artifact"]["files"]) == {"model.onnx", "prefill.onnx", "weights.bin"}


def test_verify_and_corruption(tiny_artifact, tmp_path):
    _, art = tiny_artifact
    res = CliRunner().invoke(main, ["verify", str(art.path), "--steps", "16", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"]
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(art.path, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    res = CliRunner().invoke(main, ["verify", str(bad)])
    assert res.exit_code == 1 and "sha256" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("quant, head, max_ppl_increase", [("int8", "Q8", 0.01), ("int4", "Q8", 0.05)])
def test_quantized_demo(tmp_path, quant, head, max_ppl_increase):
    art = export_model("demo", "onnx", QuantConfig(quant), tmp_path / quant, steps=32)
    m = onnx.load(str(art.path / "model.onnx"))
    ops = Counter(n.op_type for n in m.graph.node)
    L = art.manifest["config"]["n_layers"]
    assert ops["MatMulNBits"] == 8 * L + 1  # q k v g out, fc1 gate fc2 per layer, + lm_head
    assert ops["MatMul"] == 2 * L  # the two state products per layer stay fp32
    assert any(n.name == f"/model/lm_head/MatMul_{head}" for n in m.graph.node)
    v = art.manifest["validation"]
    assert v["passed"] and min(c["top1"] for c in v["checks"]) >= QuantConfig(quant).tolerance.min_top1
    from retnet_edge.evaluate import evaluate_text
    from retnet_edge.loader import DEMO_DIR
    from retnet_edge.tokenizer import load_tokenizer

    text, tok = (DEMO_DIR / "heldout.txt").read_text(), load_tokenizer(DEMO_DIR)
    q = evaluate_text(load_runner(art.path), tok, text, max_tokens=2048)["perplexity"]
    ref = evaluate_text(load_runner("demo"), tok, text, max_tokens=2048)["perplexity"]
    assert q <= ref * (1 + max_ppl_increase), (q, ref)


def test_parity_failure_exits_3_and_writes_nothing(tmp_path, monkeypatch):
    from retnet_edge import quant

    monkeypatch.setitem(quant.TOLERANCES, quant.QuantScheme.INT4, quant.Tolerance(None, 1.0, 1e-9))
    res = CliRunner().invoke(main, ["export", "demo", "--quant", "int4", "--steps", "8", "-o", str(tmp_path / "x")])
    assert res.exit_code == 3, res.output
    assert "failed validation" in res.stderr and "top-1 agreement" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--quant", "int3"], "unknown quant mode"),
    (["--lm-head", "fp8"], "lm_head"),
    (["--group-size", "20"], "group size"),
])
def test_bad_export_options(tmp_path, args, message):
    res = CliRunner().invoke(main, ["export", "demo", "-o", str(tmp_path / "x"), *args])
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_quantized_embedding_uses_gather_block_quantized(tmp_path):
    art = export_model("demo", "onnx", QuantConfig("int4", embedding="int4"), tmp_path / "e", steps=64)
    m = onnx.load(str(art.path / "model.onnx"))
    assert any(n.op_type == "GatherBlockQuantized" for n in m.graph.node)
    assert not any(n.op_type == "Gather" and n.name.startswith("/model/embed/") for n in m.graph.node)
    assert art.manifest["files"]["weights.bin"]["bytes"] < 12 * 2**20  # vs 16.1 MiB with an fp32 embedding
