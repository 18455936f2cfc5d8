"""The prefix cache: recurrent states keyed by the token prefix they summarise.

A RetNet's state is a fixed-size summary of everything read, so a prompt that extends an earlier one (a
conversation resent whole each turn, as every OpenAI client does) restores the state of its longest cached
prefix and prefills only the rest. `prefill_cached` stores a state at the end of each prompt and every
`interval` tokens inside long ones; `generate_cached` also stores the end of a finished reply. Each entry
keeps the next-token logits beside the state, so a prompt that is exactly a cached prefix runs no graph.

Entries live in an LRU under a byte budget; with a directory, every entry is also written to disk
(atomically, with a checksum: `state_file.write_snapshot`) under a folder named by the artifact's
fingerprint, and read back after a restart. A disk entry that is corrupt or from another artifact is
skipped with a warning, never used.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, RetNetEdgeError
from .generate import SamplingConfig, sample
from .session_runner import Runner
from .state_file import State, StateFileError, read_snapshot, write_snapshot

DEFAULT_INTERVAL = 512  # tokens between the states stored inside a long prompt
DEFAULT_STATES = 32  # the default memory budget, in states of the model
DEFAULT_DISK_MB = 1024
ENTRY_NAME = re.compile(r"^(\d+)-([0-9a-f]{64})\.state$")  # {prefix length}-{key}.state


class GenerationCancelled(RetNetEdgeError):
    """The caller asked to stop (Ctrl-C in chat, a client that went away) before the prompt was in."""


@dataclass
class CacheStats:
    """What the cache did since it was made: lookups that found a prefix (hits) or none, states stored and
    evicted, disk entries refused, and the prompt tokens the hits saved."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    skipped: int = 0  # disk entries refused (corrupt or foreign)
    cached_tokens: int = 0  # prompt tokens not recomputed, summed over hits


@dataclass
class Entry:
    length: int
    state: State
    logits: np.ndarray  # [V], the next token's logits after the prefix

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.logits.nbytes


class PrefixCache:
    """States by token prefix for one artifact (its `fingerprint`): memory LRU plus an optional disk tier."""

    def __init__(self, fingerprint: str, layout: tuple[int, tuple[int, ...]], budget_bytes: int,
                 directory: str | Path | None = None, interval: int = DEFAULT_INTERVAL,
                 disk_budget_bytes: int = DEFAULT_DISK_MB << 20, warn: Callable[[str], None] = lambda message: None):
        """layout: (n_layers, per-layer state shape), which disk entries must match; warn: where skipped
        disk entries are reported (one line each)."""
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.fingerprint, self.layout, self.budget = fingerprint, layout, budget_bytes
        self.interval, self.warn = interval, warn
        self.disk_budget = disk_budget_bytes
        self.memory: OrderedDict[str, Entry] = OrderedDict()  # key -> entry, least recently used first
        self.nbytes = 0
        self.stats = CacheStats()
        self.lock = threading.Lock()  # the decode thread writes; /health reads
        self.directory = Path(directory) / fingerprint[:16] if directory is not None else None
        self.disk: dict[str, int] = {}  # key -> prefix length of the entries on disk
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot use {directory} as a cache directory ({exc.strerror or exc})") from exc
            for p in self.directory.iterdir():
                if m := ENTRY_NAME.match(p.name):
                    self.disk[m[2]] = int(m[1])

    def keys_of(self, ids: Sequence[int], lengths: Sequence[int]) -> dict[int, str]:
        """The key of each prefix ids[:n] for n in lengths: sha256 over the fingerprint and the int64 ids,
        hashed in one pass (each longer prefix continues the shorter one's hash)."""
        arr = np.asarray(ids, dtype=np.int64)
        h, done, out = hashlib.sha256(self.fingerprint.encode()), 0, {}
        for n in sorted(set(lengths)):
            h.update(arr[done:n].tobytes())
            done, out[n] = n, h.copy().hexdigest()
        return out

    def lookup(self, ids: Sequence[int]) -> Entry | None:
        """The entry of the longest cached prefix of ids (ids itself included), or None."""
        with self.lock:
            lengths = {e.length for e in self.memory.values()} | set(self.disk.values())
            keys = self.keys_of(ids, [n for n in lengths if 0 < n <= len(ids)])
            for n in sorted(keys, reverse=True):
                if (entry := self.memory.get(keys[n])) is not None:
                    self.memory.move_to_end(keys[n])
                elif (entry := self._read_disk(keys[n], n)) is None:
                    continue
                self.stats.hits += 1
                self.stats.cached_tokens += n
                return entry
            self.stats.misses += 1
            return None

    def peek(self, ids: Sequence[int]) -> Entry | None:
        """The memory entry for exactly ids, if any (no counting, no disk): chat's /undo keeps it."""
        with self.lock:
            return self.memory.get(self.keys_of(ids, [len(ids)])[len(ids)]) if ids else None

    def put(self, ids: Sequence[int], state: State, logits: np.ndarray) -> None:
        """Store the state after ids (and the logits of the token after them); write it to disk too."""
        if state.fingerprint != self.fingerprint:
            raise ValueError("a state of another artifact cannot enter this cache")
        logits = np.array(logits, dtype=np.float32)  # a copy: the caller's buffer is reused
        logits.setflags(write=False)
        entry = Entry(len(ids), state, logits)
        key = self.keys_of(ids, [len(ids)])[len(ids)]
        with self.lock:
            self._remember(key, entry)
            if self.directory is not None and key not in self.disk:
                self._write_disk(key, entry)
            self.stats.stored += 1

    def _remember(self, key: str, entry: Entry) -> None:
        if key in self.memory:
            self.nbytes -= self.memory.pop(key).nbytes
        if entry.nbytes > self.budget:
            return  # a budget smaller than one state (0: the memory tier is off)
        self.memory[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.budget:
            _, old = self.memory.popitem(last=False)
            self.nbytes -= old.nbytes
            self.stats.evicted += 1

    def _write_disk(self, key: str, entry: Entry) -> None:
        try:
            write_snapshot(self._path(key, entry.length), entry.state, {"length": str(entry.length), "key": key},
                           {"logits": entry.logits})
        except OSError as exc:  # a full or read-only disk: the memory tier still serves
            self.warn(f"warning: could not write a cache entry to {self.directory} ({exc.strerror or exc})")
            return
        self.disk[key] = entry.length
        self._trim_disk()

    def _path(self, key: str, length: int) -> Path:
        return self.directory / f"{length:08d}-{key}.state"

    def _read_disk(self, key: str, length: int) -> Entry | None:
        if key not in self.disk:
            return None
        path = self._path(key, length)
        try:
            state, meta, extra = read_snapshot(path, self.fingerprint, *self.layout)
            if meta.get("key") != key or int(meta.get("length", -1)) != length or "logits" not in extra:
                raise StateFileError(f"{path} is filed under another prefix")
        except StateFileError as exc:
            del self.disk[key]
            self.stats.skipped += 1
            self.warn(f"warning: skipping cache entry {path.name}: {exc}")
            return None
        with contextlib.suppress(OSError):  # a read-only folder still serves its entries
            path.touch()  # the disk tier evicts the least recently used file first
        extra["logits"].setflags(write=False)
        entry = Entry(length, state, extra["logits"])
        self._remember(key, entry)
        return entry

    def _trim_disk(self) -> None:
        files = sorted(self.directory.glob("*.state"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.disk_budget:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            if m := ENTRY_NAME.match(p.name):
                self.disk.pop(m[2], None)

    def summary(self) -> dict:
        """Counters and sizes, for /health and the benchmark."""
        with self.lock:
            return {"entries": len(self.memory), "bytes": self.nbytes, "budget_bytes": self.budget,
                    "disk_entries": len(self.disk), **self.stats.__dict__}


def cache_for(runner: Runner, budget_mb: float | None = None, directory: str | Path | None = None,
              interval: int = DEFAULT_INTERVAL,
              warn: Callable[[str], None] = lambda message: None) -> PrefixCache | None:
    """A prefix cache for this runner's artifact (budget_mb None: room for DEFAULT_STATES states), or None
    where there is nothing to cache: a program that keeps its state inside (said through warn), or a zero
    budget without a disk tier."""
    if runner.session.state_in_program:
        warn("note: this program keeps its state inside itself (ExecuTorch runner flavour): no prefix cache, "
             "each prompt is read in full")
        return None
    if budget_mb is not None and budget_mb < 0:
        raise ConfigError(f"--cache-mb must be >= 0, got {budget_mb}")
    if budget_mb == 0 and directory is None:
        return None
    n_layers, shape = runner.cfg.n_layers, (1, *runner.cfg.state_shape)
    entry_bytes = 4 * n_layers * int(np.prod(shape)) + 4 * runner.cfg.vocab_size
    budget = DEFAULT_STATES * entry_bytes if budget_mb is None else int(budget_mb * (1 << 20))
    return PrefixCache(runner.fingerprint, (n_layers, shape), budget, directory, interval, warn=warn)


@dataclass
class TurnStats:
    """One prompt + reply: how much of the prompt came from the cache and how fast the reply came."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # restore + prefill + the first sample
    decode_s: float = 0.0
    finish_reason: str = "length"  # "stop" at the end-of-sequence token, "cancelled" when asked to stop

    @property
    def decode_tok_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0


def prefill_cached(runner: Runner, cache: PrefixCache | None, ids: Sequence[int],
                   cancel: threading.Event | None = None) -> tuple[np.ndarray, int]:
    """Bring the runner to the state after ids: restore the longest cached prefix, prefill the rest (pausing
    every `interval` tokens to store a state), store the end. Returns (next-token logits [V], cached tokens).

    Without a cache: reset and prefill. Raises GenerationCancelled if `cancel` is set between pieces."""
    if not ids:
        raise ValueError("prefill_cached needs at least one token")
    hit = cache.lookup(ids) if cache is not None else None
    if hit is not None:
        runner.restore(hit.state)
        if hit.length == len(ids):
            return np.array(hit.logits), hit.length
    else:
        runner.reset()
    start = done = hit.length if hit is not None else 0
    assert runner.position == start, "a cached state stands at the end of the prefix it summarises"
    interval = cache.interval if cache is not None else len(ids)
    for end in [*range((start // interval + 1) * interval, len(ids), interval), len(ids)]:
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("cancelled during the prompt")
        logits = runner.prefill(list(ids[done:end]), all_logits=False)[-1]
        done = end
        if cache is not None:
            cache.put(ids[:end], runner.snapshot(), logits)
    return logits, start


def generate_cached(runner: Runner, cache: PrefixCache | None, ids: Sequence[int], max_new_tokens: int,
                    sc: SamplingConfig, eos_id: int | None = None, stats: TurnStats | None = None,
                    cancel: threading.Event | None = None) -> Iterator[int]:
    """Yield new token ids after the prompt ids, resuming from the cache; stops at max_new_tokens, eos or
    `cancel`. Unless the caller stops iterating, the state after the reply is stored: the next turn of a
    conversation that resends it token for token starts there."""
    stats = stats if stats is not None else TurnStats()
    rng = np.random.default_rng(sc.seed)
    t0 = time.perf_counter()
    logits, stats.cached_tokens = prefill_cached(runner, cache, ids, cancel)
    stats.prompt_tokens, seen = len(ids), list(ids)
    for _ in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            stats.finish_reason = "cancelled"
            break
        token = sample(logits, sc, rng)
        if eos_id is not None and token == eos_id:
            stats.finish_reason = "stop"
            break
        stats.new_tokens += 1
        now = time.perf_counter()
        if stats.new_tokens == 1:
            stats.ttft_s = now - t0
        stats.decode_s = now - t0 - stats.ttft_s
        yield token
        logits = runner.step(token)
        seen.append(token)
    if stats.new_tokens == 0:
        stats.ttft_s = time.perf_counter() - t0
    if cache is not None and len(seen) > len(ids):
        cache.put(seen, runner.snapshot(), logits)
