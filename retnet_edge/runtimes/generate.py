"""Sampling and the generation loop over any Runner: prefill the prompt, then one step per token."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..base.tokenizer import Tokenizer
from ..errors import ConfigError
from . import Runner


@dataclass
class SamplingConfig:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        """Refuse settings that would sample nonsense or crash mid-stream (issue 14)."""
        bad = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            bad.append(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            bad.append(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            bad.append(f"--top-p must be in (0, 1] (1: off), got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            bad.append(f"--seed must be a non-negative integer, got {self.seed}")
        if bad:
            raise ConfigError("; ".join(bad))


def sample(logits: np.ndarray, sc: SamplingConfig, rng: np.random.Generator) -> int:
    """Next token from logits [V] with temperature, top-k and nucleus (top-p) filtering."""
    if sc.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sc.temperature
    if sc.top_k > 0 and sc.top_k < len(z):
        kth = np.partition(z, -sc.top_k)[-sc.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sc.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < sc.top_p  # the smallest prefix whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


@dataclass
class GenerationStats:
    """Token counts and seconds of one generation (prompt, then new tokens)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s else 0.0


def generate_ids(runner: Runner, prompt_ids: list[int], max_new_tokens: int, sc: SamplingConfig,
                 eos_id: int | None = None, stats: GenerationStats | None = None,
                 release_prefill: bool = False) -> Iterator[int]:
    """Yield new token ids; stops at max_new_tokens or eos. Fills `stats` as it goes.

    release_prefill frees the prompt graph once the prompt is in (one prompt per process, as in the CLI):
    decoding then holds one copy of the weights. A caller generating again keeps it for speed."""
    if max_new_tokens < 0:
        raise ConfigError(f"-n/--max-new-tokens must be >= 0, got {max_new_tokens}")
    stats = stats if stats is not None else GenerationStats()
    rng = np.random.default_rng(sc.seed)
    runner.reset()
    t0 = time.perf_counter()
    if release_prefill:
        runner.open_prompt(len(prompt_ids))  # one prompt: the graph quickest to open and run for its length
    logits = runner.prefill(prompt_ids, all_logits=False)[-1]
    stats.prompt_tokens, stats.prefill_s = len(prompt_ids), time.perf_counter() - t0
    if release_prefill:
        runner.release_prefill()
    t0 = time.perf_counter()
    for _ in range(max_new_tokens):
        token = sample(logits, sc, rng)
        if eos_id is not None and token == eos_id:
            break
        stats.new_tokens += 1
        yield token
        logits = runner.step(token)
        stats.decode_s = time.perf_counter() - t0


STREAM_CONTEXT = 8  # ids decoded before the new ones, so word-initial spaces and merges come out right


def stream_text(tokenizer: Tokenizer, ids: Iterator[int], on_text: Callable[[str], None]) -> list[int]:
    """Decode incrementally, emitting only completed text (byte-level BPE may split characters).

    Each token decodes a window: the last STREAM_CONTEXT shown ids plus the ids not shown yet, so the cost
    per token is constant (re-decoding the whole output made 40,000 tokens 10x slower than 2,000).
    """
    out: list[int] = []
    start = 0  # out[start:] is not shown yet

    def pending() -> str:
        ctx = max(0, start - STREAM_CONTEXT)
        head, text = tokenizer.decode(out[ctx:start]), tokenizer.decode(out[ctx:])
        return text[len(head):] if text.startswith(head) else ""

    for token in ids:
        out.append(token)
        new = pending()
        if new and not new.endswith("\ufffd"):
            on_text(new)
            start = len(out)
    if start < len(out) and (new := pending()):
        on_text(new)
    return out
