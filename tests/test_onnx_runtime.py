"""The ONNX artifact at run time: runner parity with eager, O(1) state files, inspect, verify, corruption."""
from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from click.testing import CliRunner

from retnet_edge.cli import main
from retnet_edge.runtimes import load_runner


def test_runner_matches_eager_and_state_files(tiny_onnx, tmp_path):
    model, art = tiny_onnx
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


def test_inspect_artifact(tiny_onnx):
    _, art = tiny_onnx
    res = CliRunner().invoke(main, ["inspect", str(art.path), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["format"] == "artifact (onnx)" and r["artifact"]["validation_passed"]
    assert set(r["artifact"]["files"]) == {"model.onnx", "prefill.onnx", "weights.bin"}


def test_verify_and_corruption(tiny_onnx, tmp_path):
    _, art = tiny_onnx
    res = CliRunner().invoke(main, ["verify", str(art.path), "--steps", "16", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"]
    bad = tmp_path / "bad"
    shutil.copytree(art.path, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 64)
    res = CliRunner().invoke(main, ["verify", str(bad)])
    assert res.exit_code == 1 and "sha256" in res.stderr and len(res.stderr.strip().splitlines()) == 1


