"""ONNX export: the I/O contract, metadata, graph guard, shared weights, manifest, the gate's refusals."""
from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import retnet_edge
from retnet_edge.cli import main
from retnet_edge.exporters.onnx import position_dependent_nodes


def test_io_contract_and_metadata(tiny_onnx):
    model, art = tiny_onnx
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


def test_graphs_share_one_weights_file(tiny_onnx):
    """Each weight is stored once although both graphs use it."""
    model, art = tiny_onnx
    weights = (art.path / "weights.bin").stat().st_size
    assert weights < 1.1 * 4 * model.num_parameters()
    total = sum((art.path / f).stat().st_size for f in ("model.onnx", "prefill.onnx", "weights.bin"))
    assert total < 1.3 * weights  # two self-contained graphs would be >= 2x


def test_manifest_lists_files_and_validation(tiny_onnx):
    _, art = tiny_onnx
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["target"] == "onnx" and set(m["files"]) == {"model.onnx", "prefill.onnx", "weights.bin"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["validation"]["passed"] and len(m["validation"]["checks"]) == 4
    assert max(c["max_rel"] for c in m["validation"]["checks"]) <= 1e-5


def test_parity_failure_exits_3_and_writes_nothing(tmp_path, monkeypatch):
    from retnet_edge import quant

    # top-1 above 1 where eager is confident cannot be met (the KL limit alone would widen to the rounding's)
    monkeypatch.setitem(quant.TOLERANCES, quant.QuantScheme.INT4, quant.Tolerance(None, 1.01, 1e-9))
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


