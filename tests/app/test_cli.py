"""CLI contract: exit codes, --json, one-line errors, lazy imports."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from retnet_edge.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("preset, params", [("tiny", 180_544), ("small", 270_033_920), ("1.3b", 1_351_727_104)])
def test_inspect_presets(preset, params):
    res = run("inspect", preset, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["parameters"] == params
    c = report["config"]
    state = c["n_layers"] * c["n_heads"] * (c["d_model"] // c["n_heads"]) * (c["value_dim"] // c["n_heads"]) * 4
    assert report["state_bytes_per_sequence"] == state
    assert report["kv_cache_bytes_fp16"]["8192"] == 2 * c["n_layers"] * 8192 * c["d_model"] * 2


def test_parameter_count_matches_the_module(tiny_model):
    from retnet_edge.app.inspection import parameter_count

    assert parameter_count(tiny_model.cfg) == tiny_model.num_parameters()


def test_init_random_then_inspect(tmp_path):
    out = tmp_path / "m"
    res = run("init-random", "--preset", "tiny", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["parameters"] == 180_544
    res = run("inspect", str(out))
    assert res.exit_code == 0 and "180,544" in res.stdout
    assert run("init-random", "--preset", "tiny", "-o", str(out)).exit_code == 1  # no overwrite without --force


@pytest.mark.parametrize("damage", ["missing", "bad_json", "truncated", "wrong_type"])
def test_bad_inputs_exit_1_with_one_line(saved_tiny, damage):
    path = saved_tiny
    if damage == "missing":
        path = saved_tiny / "nope"
    elif damage == "bad_json":
        (saved_tiny / "config.json").write_text("{not json")
    elif damage == "truncated":
        w = saved_tiny / "model.safetensors"
        w.write_bytes(w.read_bytes()[:50])
    elif damage == "wrong_type":
        cfg = json.loads((saved_tiny / "config.json").read_text())
        cfg["n_heads"] = "four"
        (saved_tiny / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: ") and len(res.stderr.strip().splitlines()) == 1


def test_unknown_preset_and_usage_errors():
    res = run("init-random", "--preset", "huge", "-o", "x")
    assert res.exit_code == 1 and "unknown preset" in res.stderr
    assert run("inspect").exit_code == 2


def test_cli_import_is_lazy():
    code = ("import sys, retnet_edge.cli; "
            "print(any(m.split('.')[0] in ('onnxruntime', 'executorch', 'onnx') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("args, message", [
    (["train", "/nope/corpus.txt", "-o", "x"], "corpus /nope/corpus.txt not found"),
    (["eval", "demo", "--text", "/nope.txt"], "text file /nope.txt not found"),
    (["generate", "demo", "hi", "--tokenizer", "/nope.json"], "tokenizer /nope.json not found"),
    (["verify", "/nope-artifact"], "not an exported artifact"),
    (["export", "/nope-model", "-o", "x"], "/nope-model does not exist"),
    (["convert", "/nope-ckpt", "-o", "x"], "/nope-ckpt does not exist"),
])
def test_missing_inputs_exit_1_with_one_line(args, message):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["generate", "demo", "x", "--threads", "-1"], "--threads must be between 1 and 256, got -1"),
    (["generate", "demo", "x", "--threads", "100000"], "--threads must be between 1 and 256, got 100000"),
    (["init-random", "--preset", "tiny", "--std", "inf", "-o", "{tmp}/m"], "--std must be a positive finite number"),
    (["init-random", "--preset", "tiny", "--std", "-1", "-o", "{tmp}/m"], "--std must be a positive finite number"),
])
def test_absurd_numbers_are_one_line_errors(tmp_path, args, message):
    res = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) <= 2, res.output
    assert not (tmp_path / "m").exists()


def test_runtime_switches_are_options_not_environment_variables():
    """--step-graph / --spin offer exactly the runtime's choices (the CLI keeps its own copy to stay light)."""
    from retnet_edge.app.cli_utils import STEP_GRAPHS
    from retnet_edge.runtimes import STEP_GRAPH_CHOICES

    assert STEP_GRAPHS == STEP_GRAPH_CHOICES
    res = run("generate", "demo", "x", "--step-graph", "chian")
    assert res.exit_code == 2 and "--step-graph" in res.stderr
