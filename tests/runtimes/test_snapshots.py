"""Runner.snapshot / restore / fork and snapshot files: exact continuation, shared weights, foreign states refused."""
from __future__ import annotations

import numpy as np
import pytest
from session_helpers import text_artifact

from retnet_edge.contract import SessionDefaults
from retnet_edge.errors import ArtifactError
from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.session_runner import Runner
from retnet_edge.runtimes.state_file import State, StateFileError, read_snapshot, write_snapshot

IDS = [int(t) for t in np.random.default_rng(0).integers(3, 101, 40)]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


def _continue(runner: Runner, tokens: list[int]) -> np.ndarray:
    return np.stack([runner.step(t) for t in tokens])


@pytest.mark.parametrize("graph", ["fused", "chain"])
def test_restore_continues_bit_for_bit(art, monkeypatch, graph):
    """ONNX, state in place (fused graph) or in two swapped buffers (chain): a restored snapshot gives the
    very logits the runner gave the first time, at the same position, after the state moved on."""
    monkeypatch.setenv("RETNET_EDGE_STEP_GRAPH", graph)
    runner = load_runner(art, threads=1)
    runner.prefill(IDS[:30])
    snap = runner.snapshot()
    assert snap.position == 30 and len(snap.tensors) == runner.cfg.n_layers
    assert snap.nbytes == 4 * runner.cfg.n_layers * int(np.prod(runner.cfg.state_shape))
    first = _continue(runner, IDS[30:])
    runner.prefill(IDS[:7])  # move on: the snapshot must not follow
    runner.restore(snap)
    assert runner.position == 30
    np.testing.assert_array_equal(_continue(runner, IDS[30:]), first)
    with pytest.raises(ValueError):  # a snapshot is read-only: cached states are restored many times
        snap.tensors[0][...] = 0


def test_fork_shares_the_session_and_owns_its_state(art):
    runner = load_runner(art, threads=1)
    runner.prefill(IDS[:20])
    twin = runner.fork()
    assert twin.session is runner.session and twin.decoder is not runner.decoder  # one copy of the weights
    assert twin.position == runner.position == 20 and twin.fingerprint == runner.fingerprint
    twin_out = _continue(twin, IDS[20:30])  # the twin moves on ...
    np.testing.assert_array_equal(_continue(runner, IDS[20:30]), twin_out)  # ... the parent did not move
    other = _continue(twin, [5, 6])
    assert not np.array_equal(other, _continue(runner, [7, 8]))  # and from here on they differ


def test_restore_refuses_another_artifact_and_another_shape(art, tmp_path_factory):
    fp32, int4 = load_runner(art), load_runner(text_artifact(tmp_path_factory, "int4"))
    assert fp32.fingerprint != int4.fingerprint  # same config, other weights
    assert load_runner(art).fingerprint == fp32.fingerprint  # stable across loads
    fp32.prefill(IDS[:5])
    with pytest.raises(ArtifactError, match="another artifact or config"):
        int4.restore(fp32.snapshot())
    bad = State(5, tuple(t[:, :1] for t in fp32.snapshot().tensors), fp32.fingerprint)
    with pytest.raises(ArtifactError, match="shape"):
        fp32.restore(bad)


def test_eager_snapshot_matches_onnx_continuation(saved_tiny):
    """Eager runners snapshot too; their fingerprint hashes the checkpoint's weights."""
    runner = load_runner(saved_tiny)
    runner.prefill(IDS[:12])
    snap = runner.snapshot()
    first = _continue(runner, IDS[12:20])
    runner.restore(snap)
    np.testing.assert_array_equal(_continue(runner, IDS[12:20]), first)
    (saved_tiny / "model.safetensors").write_bytes((saved_tiny / "model.safetensors").read_bytes()[:-4] + b"\0" * 4)
    assert load_runner(saved_tiny).fingerprint != runner.fingerprint


class ProgramStateSession(SessionDefaults):
    """A session like the ExecuTorch runner flavour's: the state lives in the program."""

    state_in_program = True

    def __init__(self, cfg):
        self.cfg = cfg

    def init_state(self, batch_size):
        return []


def test_program_state_says_so_in_one_line(art):
    runner = Runner(ProgramStateSession(load_runner(art).cfg), None)
    for call in (runner.snapshot, runner.fork, lambda: runner.restore(None)):
        with pytest.raises(ArtifactError, match="keeps its state inside itself") as err:
            call()
        assert "\n" not in str(err.value)


def test_snapshot_file_round_trip_checksum_and_fingerprint(art, tmp_path):
    runner = load_runner(art)
    runner.prefill(IDS)
    snap, shape = runner.snapshot(), (1, *runner.cfg.state_shape)
    path = tmp_path / "s.state"
    write_snapshot(path, snap, {"note": "hi"}, {"ids": np.array(IDS)})
    got, meta, extra = read_snapshot(path, runner.fingerprint, runner.cfg.n_layers, shape)
    assert got.position == 40 and meta["note"] == "hi" and extra["ids"].tolist() == IDS
    for a, b in zip(got.tensors, snap.tensors):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".*"))  # no temp file left behind
    with pytest.raises(StateFileError, match="another artifact"):
        read_snapshot(path, "0" * 64, runner.cfg.n_layers, shape)
    blob = bytearray(path.read_bytes())
    for offset in (len(blob) - 100, 40):  # a tensor byte, then a header byte
        flipped = bytearray(blob)
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises(StateFileError):
            read_snapshot(path, runner.fingerprint, runner.cfg.n_layers, shape)
    path.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(StateFileError, match="not a readable state file"):
        read_snapshot(path, runner.fingerprint, runner.cfg.n_layers, shape)


@pytest.mark.slow
@pytest.mark.parametrize("target, flavor", [("onnx", "genai"), ("executorch", "io")])
def test_snapshot_on_other_flavours(tmp_path, target, flavor):
    """The genai flavour and the ExecuTorch io program restore exactly too (minutes: two exports)."""
    from session_helpers import text_model

    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters import export_model

    art = export_model(str(text_model(tmp_path)), target, QuantConfig("fp32"), tmp_path / "art",
                       options={"flavor": flavor}, validate_artifact=False)
    runner = load_runner(art.path, threads=1)
    runner.prefill(IDS[:10])
    snap = runner.snapshot()
    first = _continue(runner, IDS[10:16])
    runner.restore(snap)
    np.testing.assert_array_equal(_continue(runner, IDS[10:16]), first)
    np.testing.assert_array_equal(_continue(runner.fork(), [4, 5]), _continue(runner, [4, 5]))


@pytest.mark.slow
def test_executorch_runner_flavour_says_it_keeps_its_state(tmp_path):
    """The real runner-flavour program (not the stub above): one line, and no prefix cache with a note."""
    from session_helpers import text_model

    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters import export_model
    from retnet_edge.runtimes.cache import cache_for

    art = export_model(str(text_model(tmp_path)), "executorch", QuantConfig("fp32"), tmp_path / "art",
                       options={"flavor": "runner"}, validate_artifact=False)
    runner = load_runner(art.path, threads=1)
    with pytest.raises(ArtifactError, match="keeps its state inside itself"):
        runner.snapshot()
    notes: list[str] = []
    assert cache_for(runner, warn=notes.append) is None and "keeps its state inside itself" in notes[0]
