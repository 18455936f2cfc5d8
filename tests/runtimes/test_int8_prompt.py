"""int8 prompt weights derived at load from an int4 artifact's codes (runtimes/onnx_int8.py)."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from retnet_edge.contract import ONNX_PREFILL_FILE, ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE
from retnet_edge.errors import ArtifactError, ConfigError
from retnet_edge.runtimes.onnx_int8 import DERIVED_FILE, derive_int8, derive_weights
from retnet_edge.runtimes.onnx_int8_graph import plan_int8_prompt
from retnet_edge.runtimes.onnxruntime import ONE_SHOT_DERIVE_TOKENS, OnnxSession
from retnet_edge.runtimes.options import RuntimeOptions


def _int4_weight(b, scales, zp, n, k, block):
    blocks = k // block
    q = np.empty((n, blocks, block), np.float32)
    q[..., 0::2], q[..., 1::2] = b & 0x0F, b >> 4
    return ((q - zp[..., None]) * scales.reshape(n, blocks)[..., None]).reshape(n, k)


def _float_reference(b, scales, zp, n, k, block):
    """Dequantize in float, then per output row to [-64, 64] with round-half-even: what derive_int8 approximates."""
    w = _int4_weight(b, scales, zp, n, k, block)
    s8 = np.abs(w).max(1) / 64
    return np.clip(np.rint(w / s8[:, None]), -64, 64), s8


@pytest.mark.parametrize("zero_points", [False, True])
def test_derived_codes_match_the_float_rounding_within_one_step(zero_points):
    rng = np.random.default_rng(0)
    n, k, block = 96, 256, 32
    b = rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.05, (n, k // block)).astype(np.float32)
    packed = rng.integers(0, 256, (n, k // block // 2), dtype=np.uint8) if zero_points else None
    zp = (np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1).astype(np.float32) if zero_points
          else np.full((n, k // block), 8.0, np.float32))
    q, s8 = derive_int8(b, scales, packed, n, k, block)
    ref_q, ref_s8 = _float_reference(b, scales, zp, n, k, block)
    assert q.dtype == np.int8 and q.shape == (n, k) and s8.shape == (n,)
    np.testing.assert_allclose(s8, ref_s8, rtol=1e-6)
    diff = np.abs(q.astype(np.int32) - ref_q)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02  # fixed point vs float: ties and 1/256 ratio steps
    assert np.abs(q).max() == 64  # each row uses the full 7-bit range at its largest weight
    # the derived weights reproduce the int4 weights to within an int8 step
    w4 = _int4_weight(b, scales, zp, n, k, block)
    assert (np.abs(q * s8[:, None] - w4) <= 1.51 * s8[:, None]).all()


@pytest.fixture(scope="module")
def int4(demo_export):
    return demo_export("onnx", "int4").path


def test_prompt_graph_swaps_every_int4_linear_for_the_int8_gemm(int4):
    plan = plan_int8_prompt(int4 / ONNX_PREFILL_FILE)
    ops = [n.op_type for n in plan.model.graph.node]
    stored = [n.op_type for n in onnx.load(str(int4 / ONNX_PREFILL_FILE), load_external_data=False).graph.node]
    assert "MatMulNBits" not in ops and ops.count("QGemm") == stored.count("MatMulNBits") == len(plan.table["linears"])
    exported = onnx.load(str(int4 / ONNX_PREFILL_INT8_FILE), load_external_data=False)
    assert [n.op_type for n in exported.graph.node] == ops  # the export wrote the same rewrite
    files = derive_weights(int4, plan.table, threads=1)
    q_bytes = sum(int(np.prod(t.dims)) for t in plan.model.graph.initializer if t.name.endswith("_P8"))
    assert files[DERIVED_FILE].nbytes >= q_bytes > 0 and set(files) == {DERIVED_FILE, "weights.bin"}


def test_opening_the_exported_int8_prompt_graph_imports_no_onnx(int4):
    """The table path needs numpy only (importing onnx costs ~1.5 s here)."""
    import subprocess
    import sys

    code = ("import sys; from retnet_edge.runtimes.onnxruntime import OnnxSession; "
            f"s = OnnxSession({str(int4)!r}, threads=1); s.open_prompt(); "
            "assert s.derived_prompt is not None; print('onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_an_artifact_without_the_int8_graph_keeps_its_stored_prompt_graph(int4, tmp_path):
    """An artifact exported before prefill_int8.onnx: its gate never ran a derived prompt, so none runs."""
    d = tmp_path / "older"
    shutil.copytree(int4, d)
    (d / ONNX_PREFILL_INT8_FILE).unlink()
    (d / ONNX_PREFILL_INT8_TABLE).unlink()
    s = OnnxSession(d, threads=1)
    s.open_prompt()
    assert s.derived_prompt is None and s.prompt_graph_variants == () and s.unchecked_files() == ()


def test_derived_prompt_tracks_the_stored_one_and_the_step_loop(int4):
    """Logits of a 40-token prompt: derived int8 weights vs the stored int4 prompt graph vs token by token."""
    ids = np.random.default_rng(1).integers(5, 500, (1, 40))
    pos = np.arange(40)[None]
    derived = OnnxSession(int4, threads=1)
    got, state = derived.run_prefill(ids, pos, derived.init_state(1))
    assert derived.derived_prompt is not None and derived.derived_prompt.linears > 0
    stored = OnnxSession(int4, threads=1, prompt_weights="stored")
    ref, ref_state = stored.run_prefill(ids, pos, stored.init_state(1))
    assert stored.derived_prompt is None

    def kl(a, b):
        pa, pb = (np.exp(x - x.max(-1, keepdims=True)) for x in (a, b))
        pa, pb = pa / pa.sum(-1, keepdims=True), pb / pb.sum(-1, keepdims=True)
        return float((pa * (np.log(pa) - np.log(pb))).sum(-1).mean())

    # the int4 weights re-rounded to 7 bits per row, activations 8 bits per row (MatMulNBits: per block of 32):
    # 6.9e-3 on the demo, where each graph is ~1.4e-2 from eager fp32 (the gate's figures)
    assert kl(ref, got) < 1e-2
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    for a, b in zip(state, ref_state):
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_one_short_prompt_opens_the_stored_graph(int4):
    s = OnnxSession(int4, threads=1)
    s.open_prompt(tokens=ONE_SHOT_DERIVE_TOKENS - 1)
    assert s.derived_prompt is None
    s.drop_prefill()
    s.open_prompt(tokens=ONE_SHOT_DERIVE_TOKENS)
    assert s.derived_prompt is not None
    s.drop_prefill()
    s.open_prompt()  # a chat or a server: the graph serves many prompts
    assert s.derived_prompt is not None


def test_the_gate_checks_both_prompt_weights(int4):
    assert OnnxSession(int4, threads=1).prompt_graph_variants == ("stored",)
    assert OnnxSession(int4, threads=1, prompt_weights="stored").prompt_graph_variants == ("auto",)
    from retnet_edge.contract.manifest import Manifest

    names = [c["name"] for c in Manifest.load(int4).validation["checks"]]
    assert any("stored prompt weights" in n for n in names) and any(n.startswith("prefill") and "stored" not in n
                                                                     for n in names)


def test_auto_keeps_the_stored_weights_where_deriving_would_not_fit(int4, monkeypatch):
    import retnet_edge.base.io_utils as io_utils

    monkeypatch.setattr(io_utils, "available_memory_bytes", lambda: 1 << 20)
    s = OnnxSession(int4, threads=1)
    s.open_prompt()
    assert s.derived_prompt is None and "GiB is available" in s.prompt_note
    assert s.unchecked_files() == (ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE)
    ids = np.arange(5, 25)[None]
    logits, _ = s.run_prefill(ids, np.arange(20)[None], s.init_state(1))
    assert np.isfinite(logits).all()


def test_an_int8_artifact_has_nothing_to_derive(demo_export):
    d = demo_export("onnx", "int8").path
    assert plan_int8_prompt(d / ONNX_PREFILL_FILE) is None and not (d / ONNX_PREFILL_INT8_TABLE).exists()
    s = OnnxSession(d, threads=1)
    s.open_prompt()
    assert s.derived_prompt is None and s.prompt_graph_variants == ()


def _copy_with_table(int4, tmp_path, edit):
    import json

    d = tmp_path / "art"
    shutil.copytree(int4, d)
    table = json.loads((d / ONNX_PREFILL_INT8_TABLE).read_text())
    edit(table)
    (d / ONNX_PREFILL_INT8_TABLE).write_text(json.dumps(table))
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(files=["../outside.bin"]), "not a file of"),
    (lambda t: t["linears"][0]["b"].update(offset=1 << 40), "do not fit"),
    (lambda t: t["linears"][1].update(q_at=0), "overlap"),
    (lambda t: t["linears"][0].update(k=100), "not derivable"),
    (lambda t: t.update(format=99), "unknown int8 prompt table format"),
    (lambda t: t.pop("linears"), "could not be read"),
    (lambda t: t["linears"][0]["b"].update(offset=1.5), "where an integer belongs"),
    (lambda t: t["linears"][0]["scales"].update(length=3), "needs"),
])
def test_a_tampered_table_gives_one_error(int4, tmp_path, edit, message):
    (tmp_path / "outside.bin").write_bytes(b"\0" * (1 << 20))
    d = _copy_with_table(int4, tmp_path, edit)
    with pytest.raises(ArtifactError, match=message):
        OnnxSession(d, threads=1).open_prompt()


def test_nan_scales_are_refused_not_rounded(int4, tmp_path):
    import json

    d = tmp_path / "art"
    shutil.copytree(int4, d)
    spec = json.loads((d / ONNX_PREFILL_INT8_TABLE).read_text())["linears"][0]["scales"]
    with open(d / "weights.bin", "r+b") as f:
        f.seek(spec["offset"])
        f.write(np.full(4, np.nan, np.float32).tobytes())
    with pytest.raises(ArtifactError, match="NaN or inf"):
        OnnxSession(d, threads=1).open_prompt()


def test_truncated_weights_give_one_error(int4, tmp_path):
    import json

    d = tmp_path / "art"
    shutil.copytree(int4, d)
    with open(d / "weights.bin", "r+b") as f:
        f.truncate((d / "weights.bin").stat().st_size // 2)
    with pytest.raises(ArtifactError, match="do not fit weights.bin"):
        derive_weights(d, json.loads((d / ONNX_PREFILL_INT8_TABLE).read_text()))


def test_unknown_prompt_weights_is_a_config_error(int4):
    with pytest.raises(ConfigError, match="--prompt-weights"):
        RuntimeOptions(prompt_weights="int3")
    with pytest.raises(ConfigError, match="--prompt-weights"):
        OnnxSession(int4, threads=1, prompt_weights="bogus")
    with pytest.raises(ConfigError, match="--prompt-weights"):
        OnnxSession(int4, threads=1).use_prompt_graph("bogus")


def test_the_gate_does_not_vouch_for_an_int8_prompt_graph_it_could_not_run(tmp_path, monkeypatch):
    """Where the derived weights do not fit during the export's gate, the int8 prompt graph is left out (the
    artifact's prompts then run the stored graph everywhere), and `verify` fails rather than pass unchecked."""
    import retnet_edge.base.io_utils as io_utils
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters import export_model

    monkeypatch.setattr(io_utils, "available_memory_bytes", lambda: 1 << 20)
    lines = []
    art = export_model("demo", "onnx", QuantConfig("int4", int4_method="rtn"), tmp_path / "art", steps=16, log=lines.append)
    assert not (art.path / ONNX_PREFILL_INT8_FILE).exists() and not (art.path / ONNX_PREFILL_INT8_TABLE).exists()
    assert ONNX_PREFILL_INT8_TABLE not in art.manifest.files and any("left out" in x for x in lines)
    assert "GiB is available" in art.manifest.validation["unchecked"][0]
    monkeypatch.undo()
    assert OnnxSession(art.path, threads=1).prompt_graph_variants == ()


def test_verify_fails_where_it_cannot_run_the_int8_prompt_graph(int4, monkeypatch):
    import retnet_edge.base.io_utils as io_utils
    from retnet_edge.exporters.pipeline import verify_artifact

    monkeypatch.setattr(io_utils, "available_memory_bytes", lambda: 1 << 20)
    v = verify_artifact(int4, steps=16)
    assert not v.report.passed and any(f.startswith("not checked: prefill_int8.onnx") for f in v.report.failures)


def test_eval_scores_the_prompt_weights_it_is_asked_for(int4):
    import json

    from click.testing import CliRunner

    from retnet_edge.cli import main

    ppl = {}
    for choice in ("auto", "stored"):
        res = CliRunner().invoke(main, ["eval", str(int4), "--max-tokens", "300", "--threads", "1", "--json",
                                        "--prompt-weights", choice])
        assert res.exit_code == 0, res.output
        ppl[choice] = json.loads(res.stdout)["perplexity"]
    assert all(np.isfinite(p) and p > 1 for p in ppl.values()) and ppl["auto"] != ppl["stored"]
    assert abs(ppl["auto"] / ppl["stored"] - 1) < 0.05  # the same model, rounded two ways
