"""The export, streamed (the one product path, issue 25): a traced one-layer template stamped out per layer,
weights read one layer at a time, must write the artifact the whole-model oracle writes (tests/exporters/
oracle.py: byte-identical weights.bin, the same logits), and its layer-streamed gate must judge as the
eager one does."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import make_model

from retnet_edge import save_pretrained, to_recurrent
from retnet_edge.checkpoints.streaming import open_weights
from retnet_edge.contract.quant import QuantConfig
from oracle import export_executorch_whole, export_onnx_whole

from retnet_edge.exporters.onnx import export_onnx
from retnet_edge.exporters.reference import StreamedReference
from retnet_edge.exporters.target import config_quant_plan, quant_plan
from retnet_edge.exporters.validate import SessionReference, validate
from retnet_edge.runtimes.eager import EagerSession

# the config variants whose graphs differ: rotary order, torchscale's normalisation and embedding norm, a
# tied head, the shared group-norm weight, GELU, an odd depth
VARIANTS = {
    "fla": dict(n_layers=3, rotary="fla", group_norm_affine="shared"),
    "torchscale": dict(n_layers=4, rotary="torchscale", normalize="torchscale", embed_norm=True,
                       tie_embeddings=True, activation="gelu"),
}
QUANTS = {"fp32": QuantConfig("fp32"), "int8": QuantConfig("int8", embedding="int8"), "int4": QuantConfig("int4"),
          "int4-all": QuantConfig("int4", lm_head="int4", embedding="int4", group_size=16),
          "int4-pw": QuantConfig("int4", prefill_weights="int8")}
# each variant against two schemes (the suite's time): together every graph shape and every quantizer path
PAIRS = [("fla", "int8"), ("fla", "int4-all"), ("torchscale", "fp32"), ("torchscale", "int4-pw")]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(directory, graph: str, cfg, T: int):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(directory / graph))
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, cfg.vocab_size, (2, T)).astype(np.int64),
            "position_ids": np.broadcast_to(np.arange(5, 5 + T, dtype=np.int64), (2, T)).copy()}
    for i in range(cfg.n_layers):
        feed[f"past.{i}.recurrent"] = rng.standard_normal((2, *cfg.state_shape)).astype(np.float32)
    return sess.run(None, feed)


def _checkpoint(variant: str, tmp_path_factory):
    model = make_model(seed=3, std=0.08, vocab_size=160, **VARIANTS[variant])
    with __import__("torch").no_grad():  # norms away from 1: distinct tensors, as in a trained model
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp(variant) / "model"
    save_pretrained(model, path)
    return model, path


_MADE: dict = {}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    if request.param not in _MADE:
        _MADE[request.param] = _checkpoint(request.param, tmp_path_factory)
    return _MADE[request.param]


@pytest.fixture(scope="module")
def torchscale_checkpoint(tmp_path_factory):
    if "torchscale" not in _MADE:
        _MADE["torchscale"] = _checkpoint("torchscale", tmp_path_factory)
    return _MADE["torchscale"]


@pytest.mark.parametrize("variant, quant", PAIRS)
def test_streamed_export_writes_the_whole_model_paths_artifact(variant, quant, tmp_path, tmp_path_factory):
    if variant not in _MADE:
        _MADE[variant] = _checkpoint(variant, tmp_path_factory)
    model, path = _MADE[variant]
    qc = QUANTS[quant]
    step = to_recurrent(model)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    whole.mkdir(), streamed.mkdir()
    assert config_quant_plan(model.cfg, qc) == quant_plan(step, qc)
    export_onnx_whole(step, qc, quant_plan(step, qc), whole)
    files = export_onnx(open_weights(path), qc, config_quant_plan(model.cfg, qc), streamed)
    int8_prompt = ["prefill_int8.onnx", "prefill_int8.json"] if quant == "int4-all" else []  # int4 prompt linears
    assert files == ["model.onnx", "model_fused.onnx", "prefill.onnx", "weights.bin", *int8_prompt]
    assert _sha(whole / "weights.bin") == _sha(streamed / "weights.bin")
    for graph, T in (("model.onnx", 1), ("model_fused.onnx", 1), ("prefill.onnx", 7)):
        a, b = _run(whole, graph, model.cfg, T), _run(streamed, graph, model.cfg, T)
        assert len(a) == len(b) == 1 + model.cfg.n_layers
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_streamed_genai_flavour_matches(torchscale_checkpoint, tmp_path):
    import onnx

    model, path = torchscale_checkpoint
    qc = QUANTS["int4"]
    step = to_recurrent(model)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    export_onnx_whole(step, qc, quant_plan(step, qc), tmp_path / "a", flavor="genai")
    export_onnx(open_weights(path), qc, quant_plan(step, qc), tmp_path / "b", flavor="genai")
    assert _sha(tmp_path / "a" / "weights.bin") == _sha(tmp_path / "b" / "weights.bin")
    a, b = (onnx.load(str(tmp_path / d / "model.onnx"), load_external_data=False) for d in "ab")
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]


def test_streamed_reference_matches_eager(checkpoint):
    """The layer-streamed gate reference: the same logits and states as the eager step loop (fp32
    rounding), and its rounded variant the same as fake_quant's copy of the model."""
    from retnet_edge.exporters.fake_quant import fake_quantize

    model, path = checkpoint
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, (3, 20)).astype(np.int64)
    step = to_recurrent(model)
    plan = quant_plan(step, QuantConfig("int4"))
    for eager, streamed in ((EagerSession(step), StreamedReference(open_weights(path))),
                            (EagerSession(fake_quantize(step, plan)), StreamedReference(open_weights(path), plan))):
        (ref, ref_state), (got, got_state) = SessionReference(eager).steps(ids), streamed.steps(ids)
        scale = np.abs(ref).max()
        assert np.abs(got - ref).max() / scale < 1e-5
        for a, b in zip(ref_state, got_state):
            assert np.abs(a - b).max() / np.abs(a).max() < 1e-5
        assert np.abs(streamed.prompt(ids) - ref).max() / scale < 1e-5


def test_the_export_gates_with_the_streamed_reference_as_eager_would(torchscale_checkpoint, tmp_path):
    """The manifest's gate (layer-streamed references) equals the gate rerun with the whole eager model and
    its rounded copy as references, check by check."""
    from retnet_edge.exporters import export_model
    from retnet_edge.exporters.fake_quant import fake_quantize
    from retnet_edge.exporters.target import TARGETS
    from retnet_edge.runtimes.onnxruntime import OnnxSession

    model, path = torchscale_checkpoint
    qc = QuantConfig("int8")
    art = export_model(str(path), "onnx", qc, tmp_path / "a")
    assert art.manifest.streamed and art.manifest.validated
    step = to_recurrent(model)
    plan = TARGETS.get("onnx").plan(step, qc)
    eager = validate(EagerSession(step), OnnxSession(art.path), qc, model.cfg.vocab_size, 64,
                     rounded=EagerSession(fake_quantize(step, plan)))
    got = {c["name"]: c["kl"] for c in art.manifest.validation["checks"]}
    want = {c.name: c.kl for c in eager.checks}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 1e-3 * max(want[k], 1e-6) + 1e-9 for k in got)


def test_streamed_gate_catches_a_broken_kernel_and_a_lost_state(torchscale_checkpoint):
    import copy

    import torch
    from test_gate import Perturbed

    model, path = torchscale_checkpoint
    step = to_recurrent(model)
    broken = copy.deepcopy(step)
    with torch.no_grad():
        w = broken.layers[1].retention.out_proj.weight
        w.copy_(w[torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(0))])
    qc = QuantConfig("int8")
    plan = quant_plan(step, qc)
    ref, rounded = StreamedReference(open_weights(path)), StreamedReference(open_weights(path), plan)
    assert validate(ref, EagerSession(step), qc, model.cfg.vocab_size, steps=24, rounded=rounded).passed
    for candidate in (EagerSession(broken), Perturbed(step, drop_state=True)):
        assert not validate(ref, candidate, qc, model.cfg.vocab_size, steps=24, rounded=rounded).passed


def test_streamed_executorch_export_gives_the_same_program_outputs(tmp_path):
    """ExecuTorch: each layer quantized as it is read (build_step) lowers to a program with the
    whole-model path's logits, bit for bit (the .pte bytes differ only in flatbuffer offsets)."""
    from retnet_edge.exporters.executorch import export_executorch
    from retnet_edge.runtimes import RuntimeOptions
    from retnet_edge.runtimes.executorch import open_executorch

    model = make_model(seed=5, std=0.08, n_layers=3, rotary="torchscale")
    save_pretrained(model, tmp_path / "m")
    qc = QuantConfig("int4")
    step = to_recurrent(model)
    plan = quant_plan(step, qc)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    export_executorch_whole(step, qc, plan, tmp_path / "a")
    export_executorch(open_weights(tmp_path / "m"), qc, plan, tmp_path / "b")
    outs = []
    for d in ("a", "b"):
        s = open_executorch(tmp_path / d, RuntimeOptions())
        state, logits = s.init_state(1), []
        for t in range(12):
            out, state = s.run_step(np.array([[t * 7 % 101]]), np.array([[t]]), state)
            logits.append(out)
        outs.append(np.concatenate(logits, axis=1))
    np.testing.assert_array_equal(outs[0], outs[1])
