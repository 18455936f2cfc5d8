"""Issue 14's fuzz corpus: 200 seeded hostile inputs, and hypothesis on the header parser and the config.

Every case: exit 0 (a harmless mutation), 1 (one `Error:` line naming the problem) or 2 (usage); never a
traceback, never a crash; an artifact whose hashed files changed is always refused; nothing written; and
the process's peak resident memory during the case grows by at most 2x the input's size + 300 MB (the
kernel's peak-RSS counter is reset before each case, so a runaway allocation anywhere is seen).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from fuzz_corpus import argument_cases, artifact_cases, checkpoint_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retnet_edge.checkpoints.tensors import safetensors_entries
from retnet_edge.cli import main
from retnet_edge.core.config import RetNetConfig
from retnet_edge.errors import RetNetEdgeError
from retnet_edge.runtimes import load_runner

CHECKPOINTS, ARTIFACTS, ARGUMENTS = list(checkpoint_cases()), list(artifact_cases()), list(argument_cases())
MEMORY_SLACK = 300 * 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@contextlib.contextmanager
def bounded_memory(input_path: Path | None):
    """Fail if peak RSS during the block exceeds RSS before it by more than 2 x input + 300 MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (Linux >= 4.0)
    except OSError:
        yield  # not Linux, or not allowed: the bound cannot be measured here
        return
    size = sum(p.stat().st_size for p in input_path.rglob("*") if p.is_file()) if input_path else 0
    before = _status_kib("VmRSS") * 1024
    yield
    grown = _status_kib("VmHWM") * 1024 - before
    assert grown <= 2 * size + MEMORY_SLACK, f"peak RSS grew by {grown / 2**20:.0f} MiB (input {size / 2**20:.1f} MiB)"


def test_the_corpus_has_at_least_200_cases():
    assert len(CHECKPOINTS) + len(ARTIFACTS) + len(ARGUMENTS) >= 200


def _clean_exit(res) -> None:
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output[-500:])
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, MemoryError))
    if res.exit_code == 1:
        assert sum(line.startswith("Error:") for line in res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.parametrize("category, name, apply", CHECKPOINTS, ids=[c[1] for c in CHECKPOINTS])
def test_checkpoint_mutations(saved_tiny, tmp_path, category, name, apply):
    d = tmp_path / "m"
    shutil.copytree(saved_tiny, d)
    apply(d)
    for args in (["inspect", str(d), "--json"], ["convert", str(d), "-o", str(tmp_path / "out")]):
        with bounded_memory(d):
            res = CliRunner().invoke(main, args)
        _clean_exit(res)
        if res.exit_code != 0:
            assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


@pytest.mark.parametrize("category, name, apply", ARTIFACTS, ids=[c[1] for c in ARTIFACTS])
def test_artifact_mutations(tiny_onnx, tmp_path, category, name, apply):
    _, art = tiny_onnx
    d = tmp_path / "art"
    shutil.copytree(art.path, d)
    apply(d)
    hashed = not name.startswith(("manifest_field", "flip_manifest"))
    with bounded_memory(d):
        try:
            runner = load_runner(d, threads=1)
        except RetNetEdgeError:
            return  # refused with a known error: the CLI turns it into one line
        assert not hashed, f"{name}: a changed artifact file was run"
        runner.prefill([1, 2, 3])  # a harmless manifest edit (e.g. a digit of export_seconds): it still runs right


@pytest.mark.parametrize("category, name, args", ARGUMENTS, ids=[c[1] for c in ARGUMENTS])
def test_absurd_arguments(tmp_path, category, name, args):
    # a short text for eval: an absurd --max-tokens means "all of it", and all of the demo's held-out text
    # took 6 minutes of the suite
    (tmp_path / "t.txt").write_text("In the beginning God created the heaven and the earth. " * 40)
    with bounded_memory(None):
        res = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    _clean_exit(res)
    assert not (tmp_path / "out").exists() or res.exit_code == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(st.binary(max_size=200),
                        st.dictionaries(st.text(max_size=8), st.dictionaries(
                            st.sampled_from(["dtype", "shape", "data_offsets"]),
                            st.one_of(st.integers(-5, 2**40), st.text(max_size=4),
                                      st.lists(st.integers(-3, 2**33), max_size=3))), max_size=4)),
       tail=st.binary(max_size=64))
def test_safetensors_header_parser_never_raises_anything_else(tmp_path, header, tail):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    try:
        entries = safetensors_entries(p)
    except RetNetEdgeError:
        return
    for e in entries.values():  # whatever parsed must read back within the file
        e.read()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["vocab_size", "d_model", "n_layers", "n_heads", "value_dim", "ffn_dim",
                                         "rotary", "norm_eps", "bos_id", "decay", "unknown_field"]),
                       st.one_of(st.integers(-2**64, 2**64), st.floats(allow_nan=True), st.text(max_size=5),
                                 st.none(), st.booleans(), st.lists(st.integers(), max_size=2)), max_size=8))
def test_config_validation_never_raises_anything_else(data):
    try:
        cfg = RetNetConfig.from_dict(data)
    except RetNetEdgeError:
        return
    assert cfg.n_layers <= 1024 and cfg.d_model <= 65536 and cfg.parameter_count() > 0
