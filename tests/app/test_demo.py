"""The bundled demo model: it loads from the package, generates, and is a trained model (not noise)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import retnet_edge
from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.checkpoints.loader import DEMO_DIR
from retnet_edge.cli import main
from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.evaluate import evaluate_text


def test_demo_ships_complete():
    names = {p.name for p in DEMO_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "heldout.txt"} <= names
    assert (DEMO_DIR / "model.safetensors").stat().st_size <= 40 * 2**20
    model = retnet_edge.load("demo")
    assert 10e6 <= model.num_parameters() <= 30e6 and model.cfg.rotary == "torchscale"
    assert model.cfg.value_dim == 2 * model.cfg.d_model


def test_heldout_text_is_large_and_unseen():
    tok = load_tokenizer(DEMO_DIR)
    held = (DEMO_DIR / "heldout.txt").read_text()
    assert len(tok.encode(held)) >= 50_000


def test_demo_perplexity_far_below_vocab():
    """A subset (4k tokens) keeps CI fast; the full held-out number is in the model card."""
    runner, tok = load_runner("demo"), load_tokenizer(DEMO_DIR)
    r = evaluate_text(runner, tok, (DEMO_DIR / "heldout.txt").read_text(), window=512, max_tokens=4096)
    assert r["tokens"] == 4096
    assert r["perplexity"] < 40, r  # full held-out text: 25.8; vocab 4096
    assert r["bits_per_byte"] < 1.4


def test_eval_cli_json():
    res = CliRunner().invoke(main, ["eval", "demo", "--max-tokens", "1024", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["tokenizer"] == "tokenizer.json" and r["perplexity"] < 60


def test_generate_is_seeded_and_greedy_matches_eager_argmax():
    res1 = CliRunner().invoke(main, ["generate", "demo", "And God said", "-n", "12", "--seed", "3", "--no-stream"])
    res2 = CliRunner().invoke(main, ["generate", "demo", "And God said", "-n", "12", "--seed", "3", "--no-stream"])
    assert res1.exit_code == 0 and res1.stdout == res2.stdout and res1.stdout.startswith("And God said")
    res = CliRunner().invoke(main, ["generate", "demo", "And God said", "-n", "8", "--temperature", "0", "--json"])
    out = json.loads(res.stdout)
    model, tok = retnet_edge.load("demo"), load_tokenizer(DEMO_DIR)
    ids = tok.encode("And God said", add_bos=True)
    with torch.no_grad():
        for _ in range(out["new_tokens"]):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert tok.decode(ids[-out["new_tokens"]:]) == out["completion"]


def test_runner_state_file_round_trip(tmp_path):
    runner = load_runner("demo")
    runner.prefill([1, 50, 60, 70])
    runner.save_state(tmp_path / "s.safetensors")
    a = runner.step(80)
    runner.reset()
    runner.load_state(tmp_path / "s.safetensors")
    assert runner.position == 4
    np.testing.assert_allclose(runner.step(80), a, rtol=0, atol=0)
    with pytest.raises(retnet_edge.CheckpointError):
        load_runner(retnet_edge.checkpoints.loader.DEMO_DIR).load_state(DEMO_DIR / "config.json")
