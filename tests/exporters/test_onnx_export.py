"""ONNX export: the I/O contract, metadata, graph guard, shared weights, manifest, the gate's refusals."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import retnet_edge
from retnet_edge.cli import main
from retnet_edge.exporters.onnx.trace import position_dependent_nodes


def test_io_contract_and_metadata(tiny_onnx):
    model, art = tiny_onnx
    cfg = model.cfg
    for fname, seq in (("model.onnx", 1), ("model_fused.onnx", 1), ("prefill.onnx", "sequence")):
        m = onnx.load(str(art.path / fname))
        ins = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
        keep = ["logits_to_keep"] if fname == "prefill.onnx" else []  # optional, default 0 = every position
        assert list(ins) == ["input_ids", "position_ids", "past.0.recurrent", "past.1.recurrent", "past.2.recurrent",
                             *keep]
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
    graphs = ("model.onnx", "model_fused.onnx", "prefill.onnx")
    total = sum((art.path / f).stat().st_size for f in (*graphs, "weights.bin"))
    assert total < 1.3 * weights  # two self-contained graphs would be >= 2x


def test_manifest_lists_files_and_validation(tiny_onnx):
    _, art = tiny_onnx
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["target"] == "onnx"
    assert set(m["files"]) == {"model.onnx", "model_fused.onnx", "prefill.onnx", "weights.bin"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["validation"]["passed"] and len(m["validation"]["checks"]) == 6  # + the chain graph's step loops
    assert sum("model.onnx" in c["name"] for c in m["validation"]["checks"]) == 2  # the fused one decodes
    assert max(c["max_rel"] for c in m["validation"]["checks"]) <= 1e-5


def test_parity_failure_exits_3_and_writes_nothing(tmp_path, monkeypatch):
    from retnet_edge.contract import quant

    # top-1 above 1 where eager is confident cannot be met (the KL limit alone would widen to the rounding's)
    monkeypatch.setitem(quant.TOLERANCES, quant.QuantScheme.INT4, quant.Tolerance(None, 1.01, 1e-9))
    res = CliRunner().invoke(main, ["export", "demo", "--quant", "int4", "--int4-method", "rtn", "--steps", "8",
                                    "-o", str(tmp_path / "x")])
    assert res.exit_code == 3, res.output
    assert "failed validation" in res.stderr and "top-1 agreement" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, code, message", [
    (["--quant", "int3"], 2, "'int3' is not one of fp32, int8, int4"),  # a choice: click's usage error
    (["--target", "onnx,tflite"], 2, "'tflite' is not one of onnx, executorch"),
    (["--lm-head", "fp8"], 2, "--lm-head"),
    (["--embedding", "int2"], 2, "--embedding"),
    (["--group-size", "20"], 1, "group size"),  # a value checked by the quant config: one line, exit 1
])
def test_bad_export_options(tmp_path, args, code, message):
    res = CliRunner().invoke(main, ["export", "demo", "-o", str(tmp_path / "x"), *args])
    assert res.exit_code == code and message in res.stderr, res.stderr
    assert code == 2 or len(res.stderr.strip().splitlines()) == 1




def _ops(path, fname):
    m = onnx.load(str(path / fname), load_external_data=False)
    return [n for n in m.graph.node]


def test_two_step_graphs_one_state_update_each(tiny_onnx):
    """model.onnx: the state update as MatMul/Mul/Add/MatMul (ai.onnx ops); model_fused.onnx: one
    LinearAttention per layer (ai.onnx opset 27 where onnxruntime has its kernel, else com.microsoft's) and no
    state MatMul. The runner decodes with the fused graph
    (state in place) at any thread count, with the chain under step_graph="chain"; both give the
    same logits."""
    from retnet_edge.runtimes import load_runner

    model, art = tiny_onnx
    L = model.cfg.n_layers
    chain, fused = _ops(art.path, "model.onnx"), _ops(art.path, "model_fused.onnx")
    assert not [n for n in chain if n.op_type == "LinearAttention"]
    assert sum(n.op_type == "MatMul" for n in chain) - sum(n.op_type == "MatMul" for n in fused) == 2 * L
    la = [n for n in fused if n.op_type == "LinearAttention"]
    from retnet_edge.exporters.onnx.fused import standard_op_available

    standard = standard_op_available()  # onnxruntime 1.32 has no kernel for the ai.onnx op: the contrib one
    assert len(la) == L and {n.domain for n in la} == ({""} if standard else {"com.microsoft"})
    imports = {o.domain: o.version for o in onnx.load(str(art.path / "model_fused.onnx"), load_external_data=False).opset_import}
    assert (imports.get("") == 27 and "com.microsoft" not in imports) if standard else "com.microsoft" in imports
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in la[0].attribute}
    assert attrs == {"q_num_heads": model.cfg.n_heads, "kv_num_heads": model.cfg.n_heads, "scale": 1.0,
                     "update_rule": b"gated"}
    assert load_runner(art.path, threads=2).session.step_file == "model_fused.onnx"
    a = load_runner(art.path, threads=1)
    assert a.session.step_file == "model_fused.onnx" and a.decoder.in_place
    b = load_runner(art.path, threads=2, step_graph="chain")
    assert b.session.step_file == "model.onnx" and not b.decoder.in_place
    with pytest.raises(retnet_edge.ConfigError, match="--step-graph"):  # a typo is an error, not a silent default
        load_runner(art.path, threads=1, step_graph="chian")
    la_, lb = a.prefill(list(range(3, 20))), b.prefill(list(range(3, 20)))
    for t in range(24):
        la_, lb = a.step(5 + t), b.step(5 + t)
        assert abs(la_ - lb).max() <= 1e-5 * abs(lb).max()


def test_state_op_standard_writes_opset_27s_op_and_is_gated(tiny_onnx, tmp_path):
    """--state-op standard: model_fused.onnx holds ai.onnx LinearAttention (opset 27, no com.microsoft import
    left for it), the gate passes on it (onnxruntime runs the op's function body where it has no kernel), the
    manifest records the choice, and it decodes as the contrib graph does."""
    from retnet_edge.runtimes import load_runner

    model, contrib = tiny_onnx
    res = CliRunner().invoke(main, ["export", str(contrib.path.parent / "model"), "--target", "onnx", "--quant",
                                    "fp32", "--state-op", "standard", "-o", str(tmp_path / "std"), "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["options"] == {"flavor": "standard", "state_op": "standard"} and manifest["validation"]["passed"]
    fused = onnx.load(str(tmp_path / "std" / "model_fused.onnx"), load_external_data=False)
    la = [n for n in fused.graph.node if n.op_type == "LinearAttention"]
    assert len(la) == model.cfg.n_layers and {n.domain for n in la} == {""}
    assert {o.domain: o.version for o in fused.opset_import}[""] == 27
    a, b = load_runner(tmp_path / "std", threads=1), load_runner(contrib.path, threads=1)
    assert a.session.step_file == "model_fused.onnx"
    la_, lb = a.prefill(list(range(3, 12))), b.prefill(list(range(3, 12)))
    for t in range(8):
        la_, lb = a.step(5 + t), b.step(5 + t)
        assert abs(la_ - lb).max() <= 1e-5 * abs(lb).max()


@pytest.mark.parametrize("args, code, message", [
    (["--state-op", "opset27"], 2, "Invalid value for '--state-op'"),
    (["--target", "executorch", "--quant", "int8", "--state-op", "standard"], 1, "applies to ONNX artifacts"),
])
def test_a_bad_state_op_is_one_line(tmp_path, args, code, message):
    res = CliRunner().invoke(main, ["export", "demo", *args, "-o", str(tmp_path / "x")])
    assert res.exit_code == code and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_onnxruntime_without_the_fused_op_decodes_with_the_chain_graph(tiny_onnx, monkeypatch):
    """An onnxruntime older than 1.25 has no LinearAttention kernel: at 1 thread the runner falls back to
    model.onnx instead of failing."""
    import onnxruntime

    from retnet_edge.runtimes import load_runner

    _, art = tiny_onnx
    real = onnxruntime.InferenceSession

    def old(path, *args, **kwargs):
        if str(path).endswith("model_fused.onnx"):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Fatal error: com.microsoft:LinearAttention(-1) "
                               "is not a registered function/op")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", old)
    r = load_runner(art.path, threads=1)
    assert r.session.step_file == "model.onnx" and not r.decoder.in_place  # two buffers on the chain
    assert r.step(5).shape[-1] == art.manifest.config.vocab_size


def test_the_contrib_op_where_onnxruntime_lacks_the_standard_one(monkeypatch):
    """Exported where onnxruntime has no kernel for opset 27's LinearAttention (1.32 inlines its function body),
    the fused graph keeps the com.microsoft op; `to_standard_op` makes it the ai.onnx op with the same outputs (float rounding: the two
    kernels sum in their own order)."""
    import onnxruntime as ort
    from helpers import make_model

    from retnet_edge import to_recurrent
    from retnet_edge.exporters.onnx import fused, trace

    monkeypatch.setattr(trace, "standard_op_available", lambda: False)
    step = to_recurrent(make_model()).with_core(fused.FusedStepCore)
    contrib = trace.trace_graph(step, step.cfg.n_layers, step.init_state(2), False)
    assert {n.domain for n in contrib.graph.node if n.op_type == "LinearAttention"} == {"com.microsoft"}
    standard = onnx.ModelProto()
    standard.CopyFrom(contrib)
    fused.to_standard_op(standard)
    assert {n.domain for n in standard.graph.node if n.op_type == "LinearAttention"} == {""}
    rng = np.random.default_rng(0)
    feed = {"input_ids": np.array([[3], [7]]), "position_ids": np.array([[4], [4]]),
            **{f"past.{i}.recurrent": rng.standard_normal((2, *step.cfg.state_shape)).astype(np.float32)
               for i in range(step.cfg.n_layers)}}
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
            for m in (contrib, standard))
    for x, y in zip(a, b):
        assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max()


def test_the_prompt_graph_computes_the_lm_head_only_where_asked(tiny_onnx):
    """prefill.onnx's optional `logits_to_keep` input (default 0: every position, so a caller that does not
    feed it sees the documented contract); 1 keeps the last position, bit-identical to the full run's last
    row, and the runner feeds it when a prompt needs only the next token."""
    import onnxruntime as ort

    from retnet_edge.runtimes import load_runner

    model, art = tiny_onnx
    m = onnx.load(str(art.path / "prefill.onnx"), load_external_data=False)
    assert "logits_to_keep" in [i.name for i in m.graph.input]
    default = next(t for t in m.graph.initializer if t.name == "logits_to_keep")
    assert onnx.numpy_helper.to_array(default).tolist() == [0]
    sess = ort.InferenceSession(str(art.path / "prefill.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(3, model.cfg.vocab_size, (2, 9)), "position_ids": np.tile(np.arange(9), (2, 1)),
            **{f"past.{i}.recurrent": np.zeros((2, *model.cfg.state_shape), np.float32)
               for i in range(model.cfg.n_layers)}}
    full = sess.run(None, feed)
    last = sess.run(None, {**feed, "logits_to_keep": np.array([1])})
    assert full[0].shape[1] == 9 and last[0].shape[1] == 1
    np.testing.assert_array_equal(full[0][:, -1:], last[0])
    for a, b in zip(full[1:], last[1:]):  # the state is the same either way
        np.testing.assert_array_equal(a, b)
    r = load_runner(art.path, threads=1)
    ids = feed["input_ids"][0].tolist()
    every = r.prefill(ids, all_logits=True)
    r.reset()
    np.testing.assert_array_equal(r.prefill(ids, all_logits=False)[-1], every[-1])
    assert r.session._keeps is True  # it fed the input


def test_the_checkpoints_chat_template_travels_with_the_artifact(tmp_path):
    """tokenizer_config.json (chat_template, bos/eos text) is copied beside the tokenizer, hashed in the
    manifest, and `chat` on the artifact finds the template; one that is not a JSON object stays behind."""
    import shutil

    from retnet_edge.app.chat import load_chat_template
    from retnet_edge.base.paths import DEMO_DIR
    from retnet_edge.exporters import export_model
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters.pipeline import copy_chat_config

    from helpers import make_model

    from retnet_edge import save_pretrained

    src = tmp_path / "m"  # a 1-layer model with the demo's vocabulary and tokenizer: the copy, not the model, is tested
    save_pretrained(make_model(n_layers=1, vocab_size=4096), src)
    shutil.copy(DEMO_DIR / "tokenizer.json", src)
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    art = export_model(str(src), "onnx", QuantConfig("fp32"), tmp_path / "art", steps=8)
    assert "tokenizer_config.json" in art.manifest.files
    assert load_chat_template(art.path).render([{"role": "user", "content": "hi"}]) == "<user>hi\n<assistant>"
    notes = []
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer_config.json").write_text("[1, 2]")
    (tmp_path / "out").mkdir()
    copy_chat_config(tmp_path / "bad", tmp_path / "out", notes.append)
    assert not (tmp_path / "out" / "tokenizer_config.json").exists() and "not a JSON object" in notes[0]
