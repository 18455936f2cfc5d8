"""Hub ids (`org/name[@rev]`) resolve through huggingface_hub's cache; tests build that cache and run offline."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from retnet_edge.base.hub import ALLOW_PATTERNS, is_hub_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, saved_tiny):
    """huggingface_hub's cache layout: blobs, a snapshot of symlinks to them, refs/main -> the commit."""
    repo = tmp_path / "hub" / "models--acme--tiny-retnet"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in saved_tiny.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


def _cli(cache, *args):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "retnet_edge", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_hub_ids_are_told_from_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("fla-hub/retnet-1.3B-100B") and is_hub_id("acme/tiny@v1.0") and is_hub_id("acme/tiny@" + COMMIT)
    assert not is_hub_id("demo") and not is_hub_id("/abs/path") and not is_hub_id("./acme/tiny")
    assert not is_hub_id("a/b/c") and not is_hub_id("out/x y") and not is_hub_id("acme/x@../../etc")
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    assert not is_hub_id("acme/tiny")  # an existing local directory wins
    assert not any(p.endswith((".py", ".bin", ".pt", ".pth")) for p in ALLOW_PATTERNS)  # never code or pickles


def test_a_cached_hub_id_works_offline_wherever_a_model_is_accepted(hub_cache, tmp_path):
    res = _cli(hub_cache, "inspect", "acme/tiny-retnet", "--json")
    assert res.returncode == 0, res.stderr
    assert f"snapshots/{COMMIT}" in res.stdout
    res = _cli(hub_cache, "inspect", f"acme/tiny-retnet@{COMMIT}")
    assert res.returncode == 0, res.stderr
    res = _cli(hub_cache, "verify", "acme/tiny-retnet", "--forms", "--steps", "8")  # loads the weights
    assert res.returncode == 0 and "passed" in res.stdout, res.stderr
    res = _cli(hub_cache, "convert", "acme/tiny-retnet", "-o", str(tmp_path / "native"))
    assert res.returncode == 0 and (tmp_path / "native" / "config.json").is_file(), res.stderr


def test_an_uncached_hub_id_offline_is_one_line(hub_cache):
    res = _cli(hub_cache, "inspect", "acme/not-downloaded")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "not in the Hugging Face cache while HF_HUB_OFFLINE is set" in res.stderr
    res = _cli(hub_cache, "inspect", "acme/tiny-retnet@no-such-revision")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
