"""`retnet-edge export MODEL -o DIR` with several targets / quants: one artifact each, a report, failures isolated."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retnet_edge.cli import main
from retnet_edge.contract.manifest import Manifest
from retnet_edge.contract.quant import QuantScheme, Tolerance


def _export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_bundle_writes_each_artifact_a_report_and_a_short_bench(saved_tiny, tmp_path):
    out = tmp_path / "bundle"
    res = _export(saved_tiny, "--target", "onnx,executorch", "--quant", "fp32", "-o", out, "--steps", "8")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == ["onnx-fp32", "executorch-fp32"]
    for a in report["artifacts"]:
        assert a["status"] == "ok" and Manifest.load(out / a["name"]).quant.scheme.value == "fp32"
        assert a["parity"]["top1"] == 1.0
        # no held-out text beside the tiny model: KL / top-1 against eager fp32 on its own sampled stream
        assert a["quality"]["metric"] == "agreement" and a["quality"]["top1"] == 1.0 and a["quality"]["kl"] < 1e-5
        by_ctx = a["bench"]["by_context"]
        assert set(by_ctx) == {"0", "2048"} and all(r["ms_per_token"] > 0 for r in by_ctx.values())
        assert by_ctx["0"]["state_bytes"] == report["source"]["state_bytes_per_sequence"]
    md = (out / "report.md").read_text()
    assert "| onnx-fp32 | ok |" in md and "| executorch-fp32 | ok |" in md and "latency_vs_context.png" in md
    assert (out / "latency_vs_context.png").stat().st_size > 1000
    assert "onnx-fp32" in res.stdout and "state per sequence" in res.stdout  # the one-screen table
    res = CliRunner().invoke(main, ["verify", str(out), "--steps", "8", "--json"])  # every artifact in DIR
    assert res.exit_code == 0, res.output
    docs = json.loads(res.stdout)
    assert [d["passed"] for d in docs] == [True, True]
    assert isinstance(docs[0]["state_divergence"], str)  # executorch runner flavour: state inside the program
    assert docs[1]["state_divergence"]["first_divergence"] is None  # onnx fp32


def test_a_failing_quant_is_reported_and_the_others_still_finish(saved_tiny, tmp_path, monkeypatch):
    from retnet_edge.contract import quant
    from retnet_edge.exporters import validate

    monkeypatch.setitem(quant.TOLERANCES, QuantScheme.INT8, Tolerance(max_rel=None, min_top1=1.01, max_kl=0.0))
    monkeypatch.setattr(validate, "KL_FACTOR", 0.5)  # ONNX int8 lands at 1.0x its rounding's KL on this model
    out = tmp_path / "bundle"
    res = _export(saved_tiny, "--target", "onnx", "--quant", "int8,fp32", "--no-bench", "-o", out, "--steps", "8")
    assert res.exit_code == 3, res.output  # the parity failure's exit code, after the report is written
    report = json.loads((out / "report.json").read_text())
    status = {a["name"]: a["status"] for a in report["artifacts"]}
    assert status == {"onnx-int8": "failed", "onnx-fp32": "ok"} and report["failed"] == ["onnx-int8"]
    assert not (out / "onnx-int8").exists() and (out / "onnx-fp32" / "manifest.json").is_file()
    assert "FAILED onnx-int8" in res.stdout and "**onnx-int8 failed**" in (out / "report.md").read_text()
    assert not list(out.glob(".*"))  # no temp dir of the failed export left behind


@pytest.mark.parametrize("args, code, message", [
    (["--quant", "int8,int5"], 2, "'int5' is not one of fp32, int8, int4"),  # choices: click's usage error
    (["--target", "onnx,tflite"], 2, "'tflite' is not one of onnx, executorch"),
    (["--target", "onnx,onnx", "--quant", "int8"], 2, "a value is repeated"),
    (["--quant", ","], 2, "needs at least one value"),
    (["--quant", "int8,int4", "--no-validate"], 1, "--no-validate is for a single artifact"),  # the request's checks
    (["--target", "onnx,executorch", "--quant", "int8,fp32", "--prefill-weights", "int8"], 1, "makes none"),
])
def test_bundle_arguments_are_checked_before_any_export(saved_tiny, tmp_path, args, code, message):
    res = _export(saved_tiny, *args, "-o", tmp_path / "b")
    assert res.exit_code == code and message in res.output and not (tmp_path / "b").exists(), res.output


def test_bundle_refuses_an_existing_directory_or_a_single_artifact(saved_tiny, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "something").write_text("x")
    res = _export(saved_tiny, "--quant", "fp32,int8", "-o", tmp_path / "b")
    assert res.exit_code == 1 and "already exists" in res.output and "--force" in res.output
    res = _export(saved_tiny, "--target", "onnx", "--quant", "fp32", "-o", tmp_path / "one", "--steps", "8")
    assert res.exit_code == 0, res.output
    res = _export(saved_tiny, "--quant", "fp32,int8", "-o", tmp_path / "one", "--force")
    assert res.exit_code == 1 and "is a single artifact" in res.output


def test_force_replaces_the_whole_bundle(saved_tiny, tmp_path):
    """Issue 29 item 9: --force over a bundle leaves nothing of the previous export (no artifact of another
    quant list beside the new ones, no stale plot or report)."""
    out = tmp_path / "b"
    res = _export(saved_tiny, "--target", "onnx", "--quant", "fp32,int8", "--no-bench", "-o", out, "--steps", "8")
    assert res.exit_code == 0, res.output
    (out / "latency_vs_context.png").write_bytes(b"old plot")
    res = _export(saved_tiny, "--target", "onnx", "--quant", "fp32,int4", "--no-bench", "-o", out, "--steps", "8",
                  "--force")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["onnx-fp32", "onnx-int4", "report.json", "report.md"]
    assert [a["name"] for a in json.loads((out / "report.json").read_text())["artifacts"]] == ["onnx-fp32", "onnx-int4"]


def test_the_demo_reports_task_accuracy_beside_perplexity(demo_export, saved_tiny, monkeypatch):
    """On the demo, each artifact's quality carries its demo-mc accuracy (TASK_ITEMS items, lm-eval) and both
    tables show it; a model the task was not built from gets none."""
    from retnet_edge.app import bundle
    from retnet_edge.app.report import render_markdown, render_table
    from retnet_edge.base.paths import DEMO_DIR
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.contract import tokenizer_file
    from retnet_edge.runtimes import load_runner

    class Bar:
        def log(self, s):
            pass

    monkeypatch.setattr(bundle, "TASK_ITEMS", 40)  # the report's 100 items cost ~3x this; the path is the same
    art = demo_export("onnx", "int8")
    runner, tok = load_runner(art.path), load_tokenizer(tokenizer_file(DEMO_DIR))
    acc = bundle._task_accuracy(DEMO_DIR, runner, tok, Bar())
    assert acc["task"] == "demo-mc" and acc["items"] == bundle.TASK_ITEMS
    assert 0.25 < acc["acc"] <= 1 and 0 < acc["acc_stderr"] < 0.1  # 4 choices: chance is 0.25, the demo scores ~0.37
    assert bundle._task_accuracy(saved_tiny, runner, tok, Bar()) is None
    report = {"source": {"path": "demo", "parameters": 1, "config": {"n_layers": 1, "d_model": 1, "n_heads": 1,
                                                                      "value_dim": 1, "vocab_size": 1},
                         "state_bytes_per_sequence": 1, "kv_cache_bytes_fp16": {"2048": 1, "32768": 2}},
              "created": "now", "machine": {"platform": "x"}, "seconds": 1, "output": "out", "quality_reference": None,
              "requests": [], "artifacts": [{"name": "onnx-int8", "status": "ok", "bytes": 1, "parity": None,
                                             "quality": {"kl": 0.01, "top1": 0.9, "task": acc}}]}
    cell = f"{100 * acc['acc']:.1f} ± {100 * acc['acc_stderr']:.1f}"
    assert cell in render_table(report) and "demo-mc %" in render_table(report)
    assert f"| {cell} |" in render_markdown(report)
