"""`--quant auto --max-kl X` and `--calibration FILE` (issue 28 items 2-3): calibration text checked once (one
line, exit 1, nothing written), each linear's measured ΔKL, a deterministic greedy mix under the bound,
recorded in the manifest as `int8_modules`."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import make_model

from retnet_edge import save_pretrained
from retnet_edge.checkpoints.loader import DEMO_DIR
from retnet_edge.cli import main
from retnet_edge.contract.manifest import Manifest
from retnet_edge.contract.quant import QuantConfig, plan_quantization
from retnet_edge.errors import ConfigError
from retnet_edge.exporters import calibration, sensitivity
from retnet_edge.exporters.sensitivity import Sensitivity, choose, read_calibration


def _export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_int8_modules_keep_those_linears_at_int8_and_must_name_linears():
    linears = {"layers.0.q": 64, "layers.0.fc2": 96, "lm_head": 64}
    plan = plan_quantization(QuantConfig("int4", int8_modules="layers.0.fc2"), linears)
    assert plan.precision == {"layers.0.q": "int4", "layers.0.fc2": "int8", "lm_head": "int8", "embed": "fp32"}
    with pytest.raises(ConfigError, match="not linears of this model: layers.9.q"):
        plan_quantization(QuantConfig("int4", int8_modules="layers.9.q"), linears)
    with pytest.raises(ConfigError, match="int8_modules is for int4"):
        QuantConfig("int8", int8_modules="layers.0.q")
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="max_kl"):
            QuantConfig("int4", max_kl=bad)


def test_choose_is_greedy_by_kl_per_byte_under_the_bound_and_deterministic():
    s = Sensitivity(int8_kl=1e-3, delta_kl={"a": 4e-3, "b": 1e-3, "c": 1e-3, "d": -1e-4},
                    saved_bytes={"a": 1000, "b": 100, "c": 1000, "d": 100}, calibration="t")
    assert choose(s, 1e-3) == ["d"]  # only what costs nothing fits at the int8 KL itself
    assert choose(s, 2.5e-3) == ["d", "c"]  # c: 1e-6 / byte before b: 1e-5 / byte; then b would pass the bound
    assert choose(s, 2e-3) == ["d", "c"] and choose(s, 4e-3) == ["d", "c", "b"]  # a (4e-3) skipped, b still fits
    assert choose(s, 1.0) == ["d", "c", "a", "b"] == choose(s, 1.0)
    assert [n for n, _ in s.worst(2)] == ["a", "b"]


def test_the_embeddings_moves_exclude_each_other_and_start_from_the_calibrated_int8():
    """base_kl (every linear int8, rounded as the export rounds: gptq) is where the sum starts, so room under
    --quant int8's own KL is spent; the embedding's int4 move replaces its int8 one and costs the difference."""
    s = Sensitivity(int8_kl=1e-3, base_kl=8e-4, calibration="t",
                    delta_kl={"embed@int8": 1e-4, "embed@int4": 5e-4, "a": 5e-5, "b": 3e-4},
                    saved_bytes={"embed@int8": 3000, "embed@int4": 3500, "a": 100, "b": 100})
    # ΔKL per byte: embed@int8 3.3e-8, embed@int4 1.4e-7, a 5e-7, b 3e-6
    assert choose(s, 1e-3) == ["embed@int8", "a"]  # 8e-4 + 1e-4 + 5e-5 <= 1e-3; int4 (+4e-4) and b do not fit
    assert choose(s, 1.32e-3) == ["embed@int4"]  # 8e-4 + 5e-4: then a no longer fits
    assert choose(s, 1.0) == ["embed@int4", "a", "b"]
    s.delta_kl["embed@int4"] = 1e-4  # int4 reached first: the int8 move after it is skipped
    assert choose(s, 1.0) == ["embed@int4", "a", "b"]
    assert Sensitivity(int8_kl=1e-3, delta_kl={}, saved_bytes={}, calibration="t").base_kl == 1e-3


@pytest.mark.parametrize("content, message", [
    (None, "calibration file .* not found"),
    (b"", "has no text"),
    (b"   \n\n", "has no text"),
    (b"abc\0def", "is binary"),
    (b"\xff\xfe\x00", "is binary"),
    (b"\xc3\x28 text", "is not UTF-8"),
])
def test_a_bad_calibration_file_is_one_line_and_exit_1(tmp_path, content, message):
    f = tmp_path / "calib.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_calibration(f)
    res = _export("demo", "--target", "onnx", "--quant", "auto", "--max-kl", "0.01", "--calibration", f,
                  "-o", tmp_path / "x")
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "Traceback" not in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_jsonl_calibration_reads_each_lines_text(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "In the beginning"}\n\n{"text": "God created"}\n')
    assert read_calibration(f) == "In the beginning\nGod created"
    f.write_text('{"text": "ok"}\n{"prompt": "no text"}\n')
    with pytest.raises(ConfigError, match="line 2 has no \"text\" string"):
        read_calibration(f)


@pytest.mark.parametrize("args, message", [
    (["--quant", "auto", "--max-kl", "-0.1"], "--max-kl must be a positive number"),
    (["--quant", "auto", "--max-kl", "nan"], "--max-kl must be a positive number"),
    (["--quant", "auto", "--max-kl", "0"], "--max-kl must be a positive number"),
    (["--quant", "auto"], "--max-kl must be a positive number"),
    (["--quant", "auto,int8", "--max-kl", "0.01"], "--quant auto makes one artifact"),
    (["--quant", "int4", "--max-kl", "0.01"], "--max-kl is for --quant auto"),
])
def test_bad_auto_arguments_are_one_line_and_exit_1(tmp_path, args, message):
    res = _export("demo", "--target", "onnx", *args, "-o", tmp_path / "x")
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) <= 2 and not (tmp_path / "x").exists()  # Error: + hint


@pytest.fixture
def tiny_with_tokenizer(tmp_path, monkeypatch):
    """A 2-layer model with the demo's vocabulary, tokenizer and held-out text; calibration cut to one window
    of 128 tokens so each eager pass is short."""
    monkeypatch.setattr(calibration, "WINDOW", 128)
    monkeypatch.setattr(sensitivity, "CALIBRATION_TOKENS", 128)
    path = tmp_path / "m"
    save_pretrained(make_model(n_layers=2, vocab_size=4096, seed=1), path)
    for f in ("tokenizer.json", "heldout.txt"):
        shutil.copy(DEMO_DIR / f, path)
    return path


def test_auto_respects_its_bound_and_plans_int8_where_it_must(tiny_with_tokenizer):
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.checkpoints.streaming import open_weights
    from retnet_edge.exporters.target import config_quant_plan

    weights, tok = open_weights(tiny_with_tokenizer), load_tokenizer(tiny_with_tokenizer / "tokenizer.json")
    ids, source = sensitivity.calibration_ids(weights, tok, None, sensitivity.CALIBRATION_TOKENS)
    assert ids.shape == (1, 128) and source.startswith("heldout.txt")
    s = sensitivity.measure(weights, "onnx", QuantConfig("int4"), ids, source)
    linears = {n: d for n, d in s.delta_kl.items() if "@" not in n}
    assert len(linears) == 17 and all(d > 0 for d in linears.values())  # 8 per layer + the head
    assert set(s.delta_kl) - set(linears) == {"embed@int8", "embed@int4"} and s.base_kl == s.int8_kl  # rtn: no codes
    assert s.saved_bytes["embed@int8"] == 4096 * 64 * 3 - 4096 * 2 * 4  # fp32 -> 8 bits, a scale per 32
    bound = s.int8_kl + sorted(s.delta_kl.values())[len(s.delta_kl) // 2]  # room for some of them
    chosen = choose(s, bound)
    assert 0 < len(chosen) < 17 and s.int8_kl + sum(s.delta_kl[n] for n in chosen) <= bound
    qc, record = sensitivity.auto_quant(weights, "onnx", QuantConfig("int4"), bound, tok)
    assert record["kl"] <= bound and record["int8_kl"] == s.int8_kl and record["int4"]
    assert (qc.max_kl, qc.calibration, qc.scheme.value) == (bound, source, "int4")
    plan = config_quant_plan(weights.cfg, qc)
    assert sorted(n for n, p in plan.precision.items() if p == "int4" and n != "embed") == record["int4"]
    assert sorted(n for n, p in plan.precision.items() if p == "int8" and n != "embed") == record["int8"]
    assert plan.precision["embed"] == record["embedding"] == qc.embedding


def test_auto_with_gptq_beats_int8_at_its_own_kl(tiny_with_tokenizer, monkeypatch):
    """With gptq the measurement reads GPTQ's integers (int8 too): the all-int8 start lands below
    `--quant int8`'s round-to-nearest KL, and a bound equal to int8's KL buys a smaller mix (the embedding
    at int8; on the demo also five int4 linears), measured under the bound; the codes' temporary directory
    is gone after."""
    import tempfile
    from pathlib import Path

    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.checkpoints.streaming import open_weights
    from retnet_edge.exporters import gptq

    monkeypatch.setattr(gptq, "GPTQ_TOKENS", 1024)
    weights, tok = open_weights(tiny_with_tokenizer), load_tokenizer(tiny_with_tokenizer / "tokenizer.json")
    qc0 = QuantConfig("int4", int4_method="gptq")
    ids, source, gids, gsource = sensitivity.measurement_ids(weights, tok, None, qc0)
    assert source.startswith("heldout.txt (before its last 1,024 tokens)") and gsource.startswith("heldout.txt (from")
    heldout = tok.encode((tiny_with_tokenizer / "heldout.txt").read_text())
    assert list(gids[-1, 1:]) == heldout[-127:] and list(ids[-1, 1:]) == heldout[-1024 - 127:-1024]  # disjoint
    with tempfile.TemporaryDirectory() as work:
        s = sensitivity.measure(weights, "onnx", qc0, ids, source, gptq_ids=gids, workdir=Path(work),
                                gptq_source=gsource)
        assert s.base_kl < 0.95 * s.int8_kl  # measured 0.92x on this model (demo: 0.86x)
        qc, record = sensitivity.plan_under(weights, "onnx", qc0, s, ids, s.int8_kl)
    assert record["kl"] <= s.int8_kl and record["embedding"] == "int8" == qc.embedding  # 0.19 MB of 0.73 MB
    assert qc.auto_kl == float(f"{record['kl']:.6g}") and "as measured" in qc.int4_params and "gptq: heldout" \
        in qc.calibration
    before = set(Path(tempfile.gettempdir()).glob("retnet-edge-auto-*"))
    assert sensitivity.auto_quant(weights, "onnx", qc0, s.int8_kl, tok)[0] == qc  # deterministic
    assert set(Path(tempfile.gettempdir()).glob("retnet-edge-auto-*")) == before


@pytest.mark.slow
def test_auto_export_records_its_plan_and_is_deterministic(tiny_with_tokenizer, tmp_path):
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.checkpoints.streaming import open_weights

    weights, tok = open_weights(tiny_with_tokenizer), load_tokenizer(tiny_with_tokenizer / "tokenizer.json")
    qc, _ = sensitivity.auto_quant(weights, "onnx", QuantConfig("int4", int4_method="gptq"), 1e-3, tok)
    res = _export(tiny_with_tokenizer, "--target", "onnx", "--quant", "auto", "--max-kl", 1e-3, "--steps", 8,
                  "-o", tmp_path / "a", "--json")
    assert res.exit_code == 0, res.output
    m = Manifest.load(tmp_path / "a")
    assert m.quant_config() == qc and m.validated  # the same plan, measured again by the command
    assert json.loads(res.stdout)["quant"]["int8_modules"] == qc.int8_modules


@pytest.mark.slow
def test_auto_on_the_demo_respects_its_bound(tmp_path):
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.checkpoints.streaming import open_weights

    weights, tok = open_weights(DEMO_DIR), load_tokenizer(DEMO_DIR / "tokenizer.json")
    qc, record = sensitivity.auto_quant(weights, "executorch", QuantConfig("int4"), 5e-3, tok)
    assert record["kl"] <= 5e-3 and record["int4"] and qc.int8_modules
    assert sensitivity.auto_quant(weights, "executorch", QuantConfig("int4"), 5e-3, tok)[0] == qc


def test_inspect_names_the_int4_plan(tiny_with_tokenizer, tmp_path):
    """`inspect` on an int4 artifact says how its weights were rounded and which linears stayed int8, with the
    bound and the calibration text that chose them."""
    from retnet_edge.exporters import export_model

    qc = QuantConfig("int4", int8_modules="layers.0.ffn.fc2,layers.1.retention.v_proj", max_kl=0.004,
                     calibration="heldout.txt (128 tokens)")
    art = export_model(str(tiny_with_tokenizer), "onnx", qc, tmp_path / "a", steps=8)
    res = CliRunner().invoke(main, ["inspect", str(art.path)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("int4 "))
    assert line == ("int4          rtn g32; 2 linear(s) kept int8: layers.0.ffn.fc2, layers.1.retention.v_proj, "
                    "chosen under --max-kl 0.004 on heldout.txt (128 tokens)"), line


def test_auto_refuses_a_nan_weight_before_measuring(tmp_path):
    import torch

    model = make_model(n_layers=2, vocab_size=4096, seed=1)
    with torch.no_grad():
        model.layers[1].ffn.fc2.weight[3, 5] = float("nan")
    save_pretrained(model, tmp_path / "m")
    for f in ("tokenizer.json", "heldout.txt"):
        shutil.copy(DEMO_DIR / f, tmp_path / "m")
    res = _export(tmp_path / "m", "--target", "onnx", "--quant", "auto", "--max-kl", "0.01", "-o", tmp_path / "x")
    assert res.exit_code == 1 and "layers.1.ffn.fc2.weight has NaN" in res.output and "sensitivity" not in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x").exists(), res.output
