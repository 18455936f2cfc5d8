"""Issue 14's reproductions: bad arguments, edited manifests, killed runs, outputs that would destroy inputs.

Each case: exit 1 (or the documented code), one `Error:` line naming the input, no traceback, nothing
written or left behind.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retnet_edge.base.io_utils import atomic_output_dir
from retnet_edge.cli import main
from retnet_edge.errors import ArtifactError
from retnet_edge.runtimes import load_runner


def _fails(args, message, tmp_path=None):
    res = CliRunner().invoke(main, args)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and message in errors[0], (res.exit_code, res.output)
    assert "Traceback" not in res.output
    return res


@pytest.mark.parametrize("args, message", [
    (["generate", "demo", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["generate", "demo", "x", "--top-p", "2"], "--top-p must be in (0, 1]"),
    (["generate", "demo", "x", "--top-k", "-5"], "--top-k must be >= 0"),
    (["generate", "demo", "x", "--temperature", "-1"], "--temperature must be >= 0"),
    (["generate", "demo", "x", "--temperature", "nan"], "--temperature must be >= 0"),
    (["generate", "demo", "x", "-n", "-1"], "--max-new-tokens must be >= 0"),
    (["generate", "demo", "x", "--seed", "-1"], "--seed must be a non-negative integer"),
    (["eval", "demo", "--window", "0"], "--window must be >= 2"),
    (["eval", "demo", "--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["eval", "demo", "--max-tokens", "-1"], "--max-tokens must be >= 1"),
    (["export", "demo", "--steps", "0", "-o", "{tmp}/out"], "--steps must be between 4 and 100000"),
    (["export", "demo", "--steps", "-5", "-o", "{tmp}/out"], "--steps must be between 4 and 100000"),
    (["export", "demo", "--quant", "int4", "--group-size", str(2**40), "-o", "{tmp}/out"], "group size must be"),
    (["export", "demo", "-o", ""], "is not a usable output path"),
    (["train", "{tmp}/corpus.txt", "-o", "{tmp}/out", "--steps", "0"], "invalid training settings: steps=0"),
    (["train", "{tmp}/corpus.txt", "-o", "{tmp}/out", "--lr", "nan"], "lr=nan"),
    (["train", "{tmp}/corpus.txt", "-o", "{tmp}/out", "--device", "tpu"], "device='tpu'"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, message):
    (tmp_path / "corpus.txt").write_text("In the beginning.\n\nAnd the earth was without form.\n" * 50)
    t0 = time.time()
    _fails([a.replace("{tmp}", str(tmp_path)) for a in args], message)
    assert time.time() - t0 < 30  # refused up front, not after an export or a training run
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_train_refuses_an_existing_output_before_training(tmp_path):
    (tmp_path / "corpus.txt").write_text("In the beginning.\n\n" * 50)
    (tmp_path / "out").mkdir()
    _fails(["train", str(tmp_path / "corpus.txt"), "-o", str(tmp_path / "out"), "--preset", "tiny"], "already exists")
    assert not (tmp_path / "out.work").exists()


def test_export_onto_its_own_source_is_refused(tmp_path):
    import retnet_edge

    retnet_edge.save_pretrained(retnet_edge.load("demo"), tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    for out in ("m", "m/inner"):
        _fails(["export", str(tmp_path / "m"), "-o", str(tmp_path / out), "--force"], "would overwrite or nest")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before


@pytest.fixture()
def artifact_copy(tiny_onnx, tmp_path):
    _, art = tiny_onnx
    d = tmp_path / "art"
    shutil.copytree(art.path, d)
    return d


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].update(n_layers=m["config"]["n_layers"] + 1), "manifest's config differs"),
    (lambda m: m["files"].update({"../../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}), "not a plain file name"),
    (lambda m: m.update(files=[]), "no \"files\" table"),
    (lambda m: m["files"]["weights.bin"].update(sha256=7), "sha256 hex digest"),
    (lambda m: m.pop("target"), "no \"target\" string"),
    (lambda m: m["config"].update(d_model="big"), "config is invalid"),
])
def test_edited_manifests_are_refused(artifact_copy, edit, message):
    _edit_manifest(artifact_copy, edit)
    with pytest.raises(ArtifactError, match=message.replace("(", r"\(").replace('"', '"')):
        load_runner(artifact_copy)
    res = CliRunner().invoke(main, ["inspect", str(artifact_copy)])
    assert res.exit_code in (0, 1) and "Traceback" not in res.output


def test_stale_temp_dirs_are_cleaned_and_unrelated_siblings_kept(tmp_path):
    out = tmp_path / "art"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".art.retnet-edge-tmp.{int(dead.stdout)}.abcd"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"partial")
    unrelated = tmp_path / ".art.old"
    unrelated.mkdir()
    (tmp_path / "art").write_text("a file at the output path")
    os.umask(0o022)
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "x").write_text("new")
    assert not stale.exists() and unrelated.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.old", "art"]  # no .old of ours left
    assert (out / "x").read_text() == "new" and (out.stat().st_mode & 0o777) == 0o755


def _export_proc(tmp_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "retnet_edge", "export", "demo", "--target", "onnx",
                             "-o", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_temp(tmp_path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not list(tmp_path.glob(".art.retnet-edge-tmp.*")):
        assert proc.poll() is None and time.time() - t0 < timeout, "the export never started writing"
        time.sleep(0.05)
    time.sleep(1.0)  # inside the export


def _wait_until(predicate, seconds: float = 20.0) -> None:
    end = time.time() + seconds
    while not predicate() and time.time() < end:
        time.sleep(0.05)


def test_sigterm_and_sigkill_mid_export_leave_nothing_and_keep_the_previous_artifact(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "previous").write_text("the artifact a --force re-export must not lose")
    proc = _export_proc(tmp_path, out, "--force")
    _wait_for_temp(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and (out / "previous").is_file()
    proc = _export_proc(tmp_path, out, "--force")
    _wait_for_temp(tmp_path, proc)
    proc.kill()
    proc.wait(60)
    assert (out / "previous").is_file()
    _wait_until(lambda: not list(tmp_path.glob(".art.retnet-edge-*")))  # the guardian cleans up after SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    with atomic_output_dir(tmp_path / "art", force=True) as tmp:
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and (out / "new").is_file()


def test_messages_say_what_is_wrong(tmp_path, tiny_onnx):
    import torch

    from retnet_edge.base.paths import DEMO_DIR

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    _fails(["inspect", str(tmp_path / "m")], "config.json is not valid JSON")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    res = _fails(["inspect", str(tmp_path / "evil.pt")], "refused by the safe loader")
    assert "weights_only=False" not in res.stderr and "references print" in res.stderr

    _, art = tiny_onnx  # vocab 101; the demo tokenizer has 4096 tokens
    _fails(["generate", str(art.path), "x", "--tokenizer", str(DEMO_DIR / "tokenizer.json")],
           "larger than the model's vocabulary")


@pytest.mark.parametrize("change, message", [
    ({"n_layers": 10**9}, "n_layers=1000000000 is beyond any supported model"),
    ({"d_model": 1e30}, "d_model must be a positive integer"),
    ({"n_layers": 1000, "d_model": 65536, "n_heads": 64}, "needs"),  # fits the limits, not this machine
])
def test_absurd_configs_are_refused_before_allocating(tmp_path, change, message):
    from retnet_edge.base.paths import DEMO_DIR

    d = tmp_path / "m"
    shutil.copytree(DEMO_DIR, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    t0 = time.time()
    res = _fails(["generate", str(d), "x", "-n", "1"], message)
    assert time.time() - t0 < 20 and len(res.stderr) < 600


def test_error_lists_are_capped(tmp_path):
    from retnet_edge.base.paths import DEMO_DIR

    d = tmp_path / "m"
    shutil.copytree(DEMO_DIR, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_layers"] = 1000  # weights for 6 layers: 994 layers of missing keys
    (d / "config.json").write_text(json.dumps(cfg))
    res = _fails(["inspect", str(d)], "missing keys")
    assert "more" in res.stderr and len(res.stderr) < 1000


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130)])  # SIGTERM takes the same path (-> 143)
def test_interrupting_an_executorch_lowering_stops_it_cleanly(tmp_path, sig, code):
    """Ctrl-C / SIGTERM inside XNNPACK lowering (native code) used to be swallowed (exit 0) or abort the
    process (exit 134): now it stops at the end of the stage, writes nothing and leaves nothing."""
    pytest.importorskip("executorch")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "retnet_edge", "export", "demo", "--target", "executorch",
                                 "-o", str(tmp_path / "art")], stdout=subprocess.DEVNULL, stderr=f)
    t0 = time.time()
    while "lowering" not in err.read_text():
        assert proc.poll() is None and time.time() - t0 < 180, err.read_text()
        time.sleep(0.1)
    time.sleep(1.5)  # inside torch.export / to_edge_transform_and_lower
    proc.send_signal(sig)
    assert proc.wait(180) == code, err.read_text()
    assert "Traceback" not in err.read_text() and "terminate called" not in err.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt"]


def test_a_previous_output_moved_aside_by_a_killed_run_comes_back(tmp_path):
    """Killed between its two renames: the output is gone and the previous one sits in the old sibling."""
    from retnet_edge.base.io_utils import clean_stale_siblings

    old = tmp_path / ".art.retnet-edge-old.999999999.abcd"
    old.mkdir()
    (old / "previous").write_text("kept")
    clean_stale_siblings(tmp_path / "art")
    assert (tmp_path / "art" / "previous").read_text() == "kept" and not old.exists()


def test_interrupted_exports_never_leave_a_half_artifact_or_a_temp_dir(saved_tiny, tmp_path):
    """10 re-exports with --force, each hit by SIGKILL or SIGINT at a random point of its run: afterwards the
    path always holds one complete artifact (every file matches its manifest's sha256), the previous one or
    the new one, and no hidden temp or moved-aside directory remains. Two output paths run side by side
    (5 rounds of 2 trials), which halves the wall time and lets the two guardians race too."""
    import random

    from retnet_edge.contract.manifest import Manifest

    dirs = [tmp_path / "outputs-a", tmp_path / "outputs-b"]

    def cmd(d: Path) -> list[str]:
        return [sys.executable, "-m", "retnet_edge", "export", str(saved_tiny), "--target", "onnx", "--quant",
                "fp32", "--steps", "8", "-o", str(d / "art"), "--force"]

    t0 = time.time()
    first = [subprocess.Popen(cmd(d), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]
    assert [p.wait(300) for p in first] == [0, 0]
    full = time.time() - t0
    rng = random.Random(7)
    outcomes = []
    for round_ in range(5):
        procs = [subprocess.Popen(cmd(d), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for d in dirs]
        delays = sorted((rng.uniform(0.1, full * 1.1), i) for i in range(2))
        start = time.time()
        for delay, i in delays:
            time.sleep(max(0.0, start + delay - time.time()))
            procs[i].send_signal((signal.SIGKILL, signal.SIGINT)[(round_ + i) % 2])
        for i, (proc, d) in enumerate(zip(procs, dirs)):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 130, -signal.SIGKILL, -signal.SIGINT), (round_, i, proc.returncode, err)
            assert "Traceback" not in err
            _wait_until(lambda: not list(d.glob(".art.*")))
            assert sorted(p.name for p in d.iterdir()) == ["art"], (round_, i, list(d.iterdir()))
            Manifest.load(d / "art", check_hashes=True)  # complete: raises on a missing or partial file
            outcomes.append(proc.returncode)
    assert len(outcomes) == 10
    assert any(rc != 0 for rc in outcomes)  # at least some trials really were interrupted mid-run
