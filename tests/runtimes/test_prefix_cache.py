"""The prefix cache: resuming equals recomputing, LRU within its budget, a disk tier that survives a restart
and skips corrupt or foreign entries."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from session_helpers import text_artifact

from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.cache import (
    GenerationCancelled,
    PrefixCache,
    cache_for,
    generate_cached,
    prefill_cached,
)
from retnet_edge.runtimes.generate import SamplingConfig

IDS = [int(t) for t in np.random.default_rng(1).integers(3, 384, 120)]
GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_resume_equals_recomputation_fp32(art):
    """Prefixes ending inside and on the stored interval; each resume within 1e-5 of a full prefill."""
    runner = load_runner(art, threads=1)
    cache = cache_for(runner, interval=32)
    assert prefill_cached(runner, cache, IDS[:50])[1] == 0
    assert sorted(e.length for e in cache.memory.values()) == [32, 50]  # every 32 tokens + the prompt end
    for n, resumed_from in ((70, 50), (120, 70), (96, 96)):  # 70 stored 64 and 70; 120 stored 96 and 120
        logits, cached = prefill_cached(runner, cache, IDS[:n])
        assert cached == resumed_from
        runner.reset()
        ref = runner.prefill(IDS[:n], all_logits=False)[-1]
        assert _rel(logits, ref) < 1e-5, n
    assert cache.stats.hits == 3 and cache.stats.cached_tokens == 50 + 70 + 96


def test_exact_prompt_runs_no_graph(art):
    runner = load_runner(art, threads=1)
    cache = cache_for(runner)
    first, _ = prefill_cached(runner, cache, IDS[:30])
    runner.prefill([7, 8, 9])  # the runner moves on; a repeat must restore, not continue
    again, cached = prefill_cached(runner, cache, IDS[:30])
    assert cached == 30 and runner.position == 30
    np.testing.assert_array_equal(again, first)


def test_greedy_text_identical_with_and_without_cache_int4(tmp_path_factory):
    """A 3-turn conversation resent whole each turn: the cached path reads only the new tokens and says
    exactly what the uncached one says. With the prompt graph's stored int4 weights: with int8 weights derived
    at load (the default) a prompt rounds differently from the steps that wrote a cached reply, and this random
    model's near-ties flip (the gate bounds that difference against eager)."""
    runner = load_runner(text_artifact(tmp_path_factory, "int4"), threads=1, prompt_weights="stored")
    cache = cache_for(runner, interval=16)
    history: list[int] = []
    for turn in range(3):
        history += IDS[turn * 20:(turn + 1) * 20]
        plain = list(generate_cached(runner, None, history, 12, GREEDY))
        cached = list(generate_cached(runner, cache, history, 12, GREEDY))
        assert cached == plain and len(plain) == 12
        history += plain
    assert cache.stats.cached_tokens == 32 + 64  # turns 2 and 3 resumed from the previous reply's end


def test_lru_evicts_within_budget(art):
    runner = load_runner(art)
    entry_bytes = runner.snapshot().nbytes + 4 * runner.cfg.vocab_size
    cache = PrefixCache(runner.fingerprint, (runner.cfg.n_layers, (1, *runner.cfg.state_shape)), 3 * entry_bytes)
    logits = np.zeros(runner.cfg.vocab_size, np.float32)
    for n in range(1, 5):
        runner.prefill([n])
        cache.put(IDS[:n], runner.snapshot(), logits)
        if n == 3:
            assert cache.lookup(IDS[:1]).length == 1  # touch 1: now 2 is the least recently used
    assert cache.nbytes <= cache.budget and len(cache.memory) == 3 and cache.stats.evicted == 1
    assert sorted(e.length for e in cache.memory.values()) == [1, 3, 4]
    assert cache.lookup(IDS[:2]).length == 1  # 2 is gone: its longest cached prefix is now 1


def test_disk_tier_survives_restart_and_skips_bad_entries(art, tmp_path):
    runner = load_runner(art, threads=1)
    cache = cache_for(runner, directory=tmp_path, interval=1000)
    ref, _ = prefill_cached(runner, cache, IDS[:60])
    prefill_cached(runner, cache, IDS[:90])
    folder = tmp_path / runner.fingerprint[:16]
    files = sorted(folder.glob("*.state"))
    assert len(files) == 2 and not list(folder.glob(".*"))  # atomic: no temp files left
    warnings: list[str] = []
    restarted = cache_for(load_runner(art, threads=1), directory=tmp_path, warn=warnings.append)
    logits, cached = prefill_cached(runner, restarted, IDS[:60])
    assert cached == 60 and _rel(logits, ref) < 1e-6 and not warnings
    # a bit flip in the 90-token entry: skipped with a warning, the 60-token entry used instead
    blob = bytearray(files[1].read_bytes())
    blob[-50] ^= 0x01
    files[1].write_bytes(bytes(blob))
    restarted = cache_for(load_runner(art, threads=1), directory=tmp_path, warn=warnings.append)
    assert prefill_cached(runner, restarted, IDS[:100])[1] == 60
    assert len(warnings) == 1 and "checksum" in warnings[0] and restarted.stats.skipped == 1


def test_foreign_disk_entry_is_skipped(art, tmp_path_factory, tmp_path):
    """An int4 entry copied into the fp32 artifact's folder under an fp32 key: refused, never restored."""
    fp32, int4 = load_runner(art, threads=1), load_runner(text_artifact(tmp_path_factory, "int4"), threads=1)
    prefill_cached(int4, cache_for(int4, directory=tmp_path), IDS[:40])
    (src,) = (tmp_path / int4.fingerprint[:16]).glob("*.state")
    ours = cache_for(fp32, directory=tmp_path)
    key = ours.keys_of(IDS, [40])[40]
    shutil.copy(src, ours.directory / f"{40:08d}-{key}.state")
    warnings: list[str] = []
    ours = cache_for(fp32, directory=tmp_path, warn=warnings.append)
    assert prefill_cached(fp32, ours, IDS[:50])[1] == 0
    assert len(warnings) == 1 and "another artifact" in warnings[0]


def test_cancel_stops_between_pieces_and_budget_zero_is_off(art):
    runner = load_runner(art, threads=1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        prefill_cached(runner, cache_for(runner, interval=16), IDS, cancel)
    assert cache_for(runner, budget_mb=0) is None
    with pytest.raises(GenerationCancelled):
        list(generate_cached(runner, None, IDS[:10], 50, GREEDY, cancel=cancel))
