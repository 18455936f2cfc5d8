"""Issue 29's rules, one test per rule of base/confine.py and per output rule of base/io_utils.py.

Everything here is fast and local: FIFOs are made with os.mkfifo in tmp_path, and every case that could
block runs under `deadline` (SIGALRM interrupts a blocking open; faulthandler ends the run if even that
fails), so a regression fails instead of hanging the suite.
"""
from __future__ import annotations

import contextlib
import errno
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retnet_edge.base import confine
from retnet_edge.base.io_utils import (
    atomic_output_dir,
    atomic_write_text,
    check_output_path,
    clean_stale_siblings,
    owner_alive,
    owner_tag,
    process_start,
    sibling_stem,
)
from retnet_edge.errors import CheckpointError, ConfigError, RetNetEdgeError


@contextlib.contextmanager
def deadline(seconds: float = 10):
    """Fail (TimeoutError) instead of blocking: SIGALRM interrupts a blocked open(); faulthandler is the
    backstop that ends the process if the block is in native code that never returns to Python."""
    def timeout(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


# --- confine: one test per rule ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "a/../../b", "a//b", "./a", "", "a\nb",
                                  "a\\..\\b", 5, None, ["a"]])
def test_plain_name_refuses_traversal_absolute_and_non_strings(name):
    with pytest.raises(CheckpointError, match="plain relative file name|must be a file name"):
        confine.plain_name(name, "shard")


def test_plain_name_keeps_plain_names():
    assert confine.plain_name("model-00001-of-00002.safetensors", "shard") == "model-00001-of-00002.safetensors"
    assert confine.plain_name("sub/dir/x.safetensors", "shard") == "sub/dir/x.safetensors"


def test_inside_follows_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.bin"
    root.mkdir()
    outside.write_bytes(b"secret")
    (root / "ok.bin").write_bytes(b"x")
    (root / "link-in").symlink_to("ok.bin")
    (root / "link-out").symlink_to(outside)
    (root / "dangling-out").symlink_to("/nonexistent/elsewhere")
    assert confine.inside(root, root / "ok.bin", "file") == root / "ok.bin"
    assert confine.inside(root, root / "link-in", "file") == root / "link-in"
    for name in ("link-out", "dangling-out"):
        with pytest.raises(CheckpointError, match="resolves outside"):
            confine.inside(root, root / name, "file")
    # a root reached through a symlink is resolved too
    (tmp_path / "alias").symlink_to(root)
    assert confine.inside(tmp_path / "alias", tmp_path / "alias" / "ok.bin", "file")


def test_checkpoint_root_of_a_hub_snapshot_is_its_repo_folder(tmp_path):
    snap = tmp_path / "models--acme--tiny" / "snapshots" / ("a" * 40)
    assert confine.checkpoint_root(snap) == tmp_path / "models--acme--tiny"
    assert confine.checkpoint_root(tmp_path / "model") == tmp_path / "model"
    assert confine.checkpoint_root(tmp_path / "snapshots" / ("a" * 40)) == tmp_path / "snapshots" / ("a" * 40)


def test_regular_file_refuses_special_files_before_opening(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_bytes(b"x" * 100)
    with deadline():
        for path, kind in ((fifo, "a named pipe"), (tmp_path / "dir", "a directory"),
                           (Path("/dev/zero"), "a character device"), (Path("/dev/null"), "a character device")):
            with pytest.raises(CheckpointError, match=kind):
                confine.regular_file(path, "input")
            with pytest.raises(CheckpointError, match=kind):
                confine.read_bounded(path, "input", 10)
        with pytest.raises(CheckpointError, match="100 bytes; at most 10"):
            confine.read_bounded(tmp_path / "big", "input", 10)
        with pytest.raises(CheckpointError, match="not found"):
            confine.regular_file(tmp_path / "missing", "input")
        assert confine.read_bounded(tmp_path / "big", "input", 100) == b"x" * 100


def test_open_regular_checks_the_descriptor_too(tmp_path, monkeypatch):
    """A file swapped for a FIFO between the stat and the open is still refused, and the open never blocks."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(confine, "regular_file", lambda path, *a, **k: Path(path))  # the stat "passed"
    with deadline(), pytest.raises(CheckpointError, match="a named pipe"):
        confine.open_regular(fifo, "input")


def test_distinct_files_refuses_one_file_under_two_names(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").symlink_to("a.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"x")
    confine.distinct_files([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], "index")
    with pytest.raises(CheckpointError, match="lists one file twice"):
        confine.distinct_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], "index")


@pytest.mark.parametrize("text", ["main", "../../x", "/abs", "A" * 40, "0" * 39, "0" * 41, ""])
def test_commit_hash_is_40_lowercase_hex(text):
    with pytest.raises(CheckpointError, match="commit hash"):
        confine.commit_hash(text, "ref")


def test_hub_snapshot_stays_in_its_repo_folder(tmp_path):
    repo = tmp_path / "models--acme--tiny"
    snap = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "blobs" / "b1").write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/b1")
    assert confine.hub_snapshot(snap, repo, "acme/tiny") == snap
    for bad in (tmp_path / "elsewhere", repo / "snapshots" / "main", repo / "snapshots" / ("c" * 40) / ".."):
        with pytest.raises(CheckpointError, match="does not resolve to a snapshot"):
            confine.hub_snapshot(bad, repo, "acme/tiny")
    (tmp_path / "secret").write_text("{}")
    (snap / "tokenizer.json").symlink_to(tmp_path / "secret")
    with pytest.raises(CheckpointError, match="resolves outside"):
        confine.hub_snapshot(snap, repo, "acme/tiny")


# --- config: `extra` bounded, floats finite ---------------------------------------------------------

def test_config_extra_is_a_bounded_json_object():
    from retnet_edge.core.config import EXTRA_MAX_BYTES, RetNetConfig

    base = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4)
    RetNetConfig(**base, extra={"source_format": "fla"})
    with pytest.raises(ConfigError, match=f"at most {EXTRA_MAX_BYTES:,}"):
        RetNetConfig.from_dict({**base, "extra": {"blob": "x" * (EXTRA_MAX_BYTES + 1)}})
    with pytest.raises(ConfigError, match="extra must be a JSON object"):
        RetNetConfig.from_dict({**base, "extra": "x"})
    for field in ("embed_scale", "norm_eps", "rope_theta"):
        with pytest.raises(ConfigError, match="positive finite"):
            RetNetConfig.from_dict({**base, field: float("inf")})


# --- outputs: recovery, stale owners, long names, modes, parents ------------------------------------

def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_recovery_never_overwrites_the_restored_backup(tmp_path):
    """Item 10: a moved-aside previous output and no output: a run without --force restores it and stops."""
    old = tmp_path / f".art.retnet-edge-old.{_dead_pid()}.abcd"
    old.mkdir()
    (old / "previous").write_text("kept")
    with pytest.raises(RetNetEdgeError, match="already exists \\(restored from an interrupted run\\)"), \
            atomic_output_dir(tmp_path / "art") as tmp:
        (tmp / "new").write_text("must not replace the backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["previous"]


def test_an_output_that_appears_while_writing_is_not_replaced_without_force(tmp_path):
    with pytest.raises(RetNetEdgeError, match="appeared while"), atomic_output_dir(tmp_path / "art") as tmp:
        (tmp / "new").write_text("x")
        (tmp_path / "art").mkdir()
        (tmp_path / "art" / "theirs").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["theirs"]


def test_a_pid_reused_by_another_live_process_does_not_keep_a_stale_temp_dir(tmp_path):
    """Item 11: the owner is pid + start time; a live process with that pid but another start is not it."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start(live.pid)
        assert start is not None  # Linux
        assert owner_alive(owner_tag(live.pid)) and owner_alive(str(live.pid))
        stale = tmp_path / f".art.retnet-edge-tmp.{live.pid}-{int(start) - 1}.abcd"  # its pid, an earlier start
        mine = tmp_path / f".art.retnet-edge-tmp.{owner_tag(live.pid)}.efgh"  # really that live process's
        stale.mkdir()
        mine.mkdir()
        assert clean_stale_siblings(tmp_path / "art") == [stale]
        assert mine.is_dir()
    finally:
        live.kill()
        live.wait()
    assert not owner_alive(f"{live.pid}-{start}")
    assert clean_stale_siblings(tmp_path / "art") == [mine]


@pytest.mark.parametrize("length", [200, 230, 255])
def test_long_output_names_work_and_leave_nothing(tmp_path, length):
    """Item 11: the hidden siblings' names fit NAME_MAX (255) whatever the output's length."""
    name = "n" * length
    with atomic_output_dir(tmp_path / name) as tmp:
        (tmp / "x").write_text("x")
    with atomic_output_dir(tmp_path / name, force=True) as tmp:
        (tmp / "y").write_text("y")
    atomic_write_text(tmp_path / ("r" * length), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "r" * length])
    assert len(f".{sibling_stem(tmp_path / name)}.retnet-edge-old.{owner_tag()}.abcdef01".encode()) <= 255


def test_outputs_follow_the_umask(tmp_path):
    """Item 11: report files (atomic_write_text) and saved weights were 0600 while the rest followed the umask."""
    import torch

    from retnet_edge.base.io_utils import write_safetensors

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        write_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        with atomic_output_dir(tmp_path / "art") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o750


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for path, directory, message in ((tmp_path / "file" / "out.json", False, "is not a directory"),
                                     (tmp_path / "dir", False, "it is a directory"),
                                     (tmp_path / "file", True, "is a file, not a directory"),
                                     ("", False, "not a usable output path")):
        with pytest.raises(RetNetEdgeError, match=message):
            check_output_path(path, directory=directory)
    assert check_output_path(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"


# --- children die with their parent (items 7 and 8) -------------------------------------------------

PARENT = """
import sys
from retnet_edge.base.interrupts import run_tied, sigterm_as_exit
with sigterm_as_exit():
    run_tied([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"])
"""


def _child_of(parent: subprocess.Popen) -> int:
    t0 = time.time()
    while time.time() - t0 < 30:
        kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
        if kids.exists() and kids.read_text().split():
            return int(kids.read_text().split()[0])
        time.sleep(0.05)
    raise AssertionError("the child never started")


def _gone(pid: int, seconds: float = 10) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":  # dead, waiting for a reaper
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_tied_child_dies_with_its_parent(sig):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = _child_of(parent)
    time.sleep(0.3)
    parent.send_signal(sig)
    parent.wait(30)
    assert _gone(child), f"child {child} outlived its parent ({sig.name})"


def test_cli_errors_stay_one_line_and_name_the_system_error():
    from retnet_edge.app.cli_utils import one_line, os_error

    assert one_line("Error: /tmp/a\nb does not exist") == "Error: /tmp/a\\nb does not exist"
    assert os_error(OSError(errno.ENOSPC, "No space left on device", "/out/weights.bin")) == \
        "/out/weights.bin: no space left on the device"
    assert os_error(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300)).endswith("file name too long")
    assert os_error(OSError(errno.ECONNRESET, "reset")) is None


def test_read_json_is_bounded_and_regular(tmp_path):
    from retnet_edge.base.io_utils import read_json

    big = tmp_path / "config.json"
    with open(big, "wb") as f:  # sparse: refused from its size, never read
        f.truncate(confine.JSON_MAX_BYTES + 1)
    with pytest.raises(CheckpointError, match="at most"):
        read_json(big)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(CheckpointError, match="named pipe"):
        read_json(fifo)
    (tmp_path / "ok.json").write_text(json.dumps({"a": 1}))
    assert read_json(tmp_path / "ok.json") == {"a": 1}
