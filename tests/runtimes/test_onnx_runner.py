"""The ONNX artifact at run time: runner parity with eager, O(1) state files, inspect, verify, corruption."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
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
    assert set(r["artifact"]["files"]) == {"model.onnx", "model_fused.onnx", "prefill.onnx", "weights.bin"}


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




@pytest.mark.parametrize("graph, in_place", [("fused", True), ("chain", False)])
def test_bound_decoder_matches_functional_session(tiny_onnx, graph, in_place):
    """The IOBinding decoder gives the functional session's logits and state bit for bit, across prefill
    chunks, steps, a state set from outside and a dropped prefill graph: on model_fused.onnx with past and
    present of a step in one buffer (onnxruntime's LinearAttention updates it where it lies), on model.onnx
    with two buffers swapped after each call."""
    from retnet_edge.runtimes.onnxruntime import BoundDecoder, OnnxSession
    from retnet_edge.runtimes.session_runner import StateDecoder

    _, art = tiny_onnx
    session = OnnxSession(art.path, threads=2, prefill_chunk=7, step_graph=graph)
    bound, plain = BoundDecoder(session), StateDecoder(session)
    assert bound.in_place is in_place
    assert session.step_file == ("model_fused.onnx" if in_place else "model.onnx")
    ids = np.random.default_rng(0).integers(0, 101, (1, 20))
    for dec in (bound, plain):
        dec.reset()
    np.testing.assert_array_equal(bound.prefill(ids, np.arange(20)[None], last_only=False),
                                  plain.prefill(ids, np.arange(20)[None], last_only=False))
    assert (bound.buffers[1 - bound.cur] is None) is in_place  # in place, decoding holds one state
    for pos, tok in enumerate([3, 9, 27, 81], start=20):
        np.testing.assert_array_equal(bound.step(tok, pos), plain.step(tok, pos))
    for a, b in zip(bound.get_state(), plain.get_state()):
        np.testing.assert_array_equal(a, b)
    state = [s * 0.5 for s in plain.get_state()]
    bound.set_state(state)
    plain.set_state(state)
    session.drop_prefill()  # reopened on the next prompt
    np.testing.assert_array_equal(bound.prefill(ids[:, :3], np.arange(24, 27)[None], last_only=True),
                                  plain.prefill(ids[:, :3], np.arange(24, 27)[None], last_only=True))
    np.testing.assert_array_equal(bound.step(7, 27), plain.step(7, 27))
    logits = bound.step(8, 28)
    bound.step(9, 29)
    assert not np.shares_memory(logits, bound.logits)  # a returned row is the caller's, not the next step's
    before = bound.get_state()
    plain.step(8, 28), plain.step(9, 29)
    for a, b in zip(before, plain.get_state()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.shares_memory(a, b) for a, b in zip(before, bound.buffers[bound.cur]))  # get_state copies


BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "executorch", "torchao", "onnxscript"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""


def test_onnx_runtime_path_needs_no_torch(demo_export, tmp_path):
    """The base install (no torch, no executorch): runner, generate and eval on an ONNX artifact run with
    those imports blocked; a command that needs torch says which extra to install."""
    import subprocess
    import sys

    d = demo_export("onnx", "int4").path
    script = BLOCK_TORCH + f"""
from retnet_edge.runtimes import load_runner
r = load_runner({str(d)!r}, threads=1)
r.prefill([1, 2, 3]); r.step(4); r.release_prefill(); r.step(5)
assert "torch" not in sys.modules and "onnxruntime" in sys.modules
from retnet_edge.cli import main
sys.argv = ["retnet-edge"] + sys.argv[1:]
main()
"""
    run = lambda *args: subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    for args in (["generate", str(d), "In the", "-n", "5", "--temperature", "0"],
                 ["eval", str(d), "--max-tokens", "300"]):
        res = run(*args)
        assert res.returncode == 0, res.stderr
    res = run("init-random", "--preset", "tiny", "-o", str(tmp_path / "x"))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert last == "Error: this needs torch, which the base install leaves out (hint: pip install 'retnet-edge[export]')"


def test_runner_refuses_modified_artifact_files(tiny_onnx, tmp_path):
    """generate / eval / load_runner check the manifest's sha256 before running (issue 14: a bit-flipped
    weights.bin used to run and print different text with exit 0)."""
    from retnet_edge.errors import ArtifactError

    _, art = tiny_onnx
    bad = tmp_path / "bad"
    shutil.copytree(art.path, bad)
    with open(bad / "weights.bin", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ArtifactError, match="weights.bin does not match its manifest sha256"):
        load_runner(bad)
    from retnet_edge.base.paths import DEMO_DIR

    res = CliRunner().invoke(main, ["generate", str(bad), "x", "-n", "2", "--tokenizer", str(DEMO_DIR / "tokenizer.json")])
    assert res.exit_code == 1 and "sha256" in res.stderr and "Traceback" not in res.stderr
    load_runner(bad, verify_files=False)  # an explicit opt-out (bench hashes once, then times the loads)


def test_eval_refuses_nan_logits(tmp_path):
    """A model with a NaN weight: eval fails with one line instead of printing `perplexity nan`."""
    import retnet_edge
    from retnet_edge.base.paths import DEMO_DIR

    model = retnet_edge.load("demo")
    with torch.no_grad():
        model.layers[2].ffn.fc2.weight[3, 5] = float("nan")
    retnet_edge.save_pretrained(model, tmp_path / "m")
    shutil.copyfile(DEMO_DIR / "tokenizer.json", tmp_path / "m" / "tokenizer.json")
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "m"), "--max-tokens", "64"])
    assert res.exit_code == 1 and "non-finite logits" in res.stderr, res.output


def test_ten_thousand_steps_stay_finite_and_on_the_chunkwise_form(tiny_onnx):
    """10,000 recurrent steps through the ONNX step graph (3-layer fp32 model, state in place): finite,
    and the logits at steps 1,000 and 10,000 within 1e-3 relative of the eager chunkwise form. The demo
    model's 1M-step run is benchmarks/long_run.py (issue 14)."""
    from retnet_edge.bench.stability import long_run

    model, art = tiny_onnx
    records = long_run(load_runner(art.path, threads=1), model, 10_000, [1_000, 10_000])
    assert [r["step"] for r in records] == [1_000, 10_000]
    for r in records:
        assert r["finite"] and r["max_rel"] < 1e-3, r
