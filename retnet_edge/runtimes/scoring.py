"""Log-likelihood of continuations over a Runner, each context read once; a model against a reference.

Numpy only: no torch, no lm_eval (the lm-eval adapter, app/lm_eval_model.py, calls this).

A multiple-choice item asks for log P(choice | context) of every choice, and its choices share the context.
A RetNet's state after the context is a fixed-size summary of it (eq. 6: S_n = γ S_{n-1} + k_nᵀ v_n), so the
context is prefilled once, the state snapshotted, and each continuation scored from a restored copy: a
choice costs its own tokens only. From scratch, every choice re-reads the context. Both paths run the same
calls from the state after the context (prefill the context, then the continuation), so their scores agree
to the runtime's determinism. A program that keeps its state inside itself (ExecuTorch's runner flavour)
cannot be snapshotted: it is scored from scratch, and the stats say so.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..base.io_utils import read_json
from ..base.tokenizer import Tokenizer
from ..contract import DELEGATION_FILE, GENAI_CONFIG_FILE, log_softmax
from ..errors import ArtifactError, ConfigError
from .session_runner import Runner

CHUNK = 1024  # continuation tokens per prefill call: a long one (a rolling window) then holds 1024 x V logits


@dataclass(frozen=True)
class Request:
    """Score `continuation` after `context` (token ids; the context holds the BOS where the model wants one)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.context or not self.continuation:
            raise ConfigError("a scoring request needs a non-empty context and continuation")


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of log P(continuation token | everything before it)
    is_greedy: bool  # every continuation token is the argmax of its row


@dataclass
class ScoringStats:
    """What the model ran, against what scoring every request from scratch would have run."""

    requests: int = 0
    contexts: int = 0  # distinct contexts (prefilled once each when shared)
    tokens: int = 0  # tokens run through the model
    naive_tokens: int = 0  # sum over requests of context + continuation - 1
    seconds: float = 0.0
    shared: bool = True  # False: from scratch (asked for, or the program keeps its state inside itself)
    notes: list[str] = field(default_factory=list)

    def add(self, other: ScoringStats) -> None:
        self.requests += other.requests
        self.contexts += other.contexts
        self.tokens += other.tokens
        self.naive_tokens += other.naive_tokens
        self.seconds += other.seconds
        self.shared = self.shared and other.shared
        self.notes += [n for n in other.notes if n not in self.notes]

    def to_dict(self) -> dict:
        saved = self.naive_tokens / self.tokens if self.tokens else 1.0
        return {**asdict(self), "token_ratio": saved}


def can_share(runner: Runner) -> bool:
    """Whether the runner's state can be snapshotted (not when the program keeps it inside itself)."""
    return not runner.session.state_in_program


def context_limit(artifact_dir: Path | None) -> int | None:
    """The longest sequence an artifact declares it may be fed, or None (a RetNet's state has no limit).

    ExecuTorch programs carry the stock LLM runner's `get_max_context_len`; the genai flavour its
    `context_length`. Eager checkpoints and standard ONNX graphs declare none."""
    if artifact_dir is None:
        return None
    d = Path(artifact_dir)
    if (d / DELEGATION_FILE).is_file():
        return read_json(d / DELEGATION_FILE).get("constant_methods", {}).get("get_max_context_len")
    if (d / GENAI_CONFIG_FILE).is_file():
        return read_json(d / GENAI_CONFIG_FILE).get("model", {}).get("context_length")
    return None


def check_lengths(requests: Sequence[Request], max_length: int | None) -> None:
    """Refuse, before anything runs, a request longer than `max_length` tokens (context + continuation)."""
    if max_length is None:
        return
    worst = max(requests, key=lambda r: len(r.context) + len(r.continuation), default=None)
    if worst is not None and len(worst.context) + len(worst.continuation) > max_length:
        raise ConfigError(f"an item is {len(worst.context) + len(worst.continuation)} tokens long (context "
                          f"{len(worst.context)} + continuation {len(worst.continuation)}), more than this "
                          f"artifact's limit of {max_length}", hint="use a task with shorter items, or fewer shots")


def _continuation(runner: Runner, first_row: np.ndarray, continuation: tuple[int, ...]) -> Score:
    """Score `continuation` from the runner's current state; `first_row` [V]: the logits before its first token."""
    lp = log_softmax(first_row)
    total, greedy = float(lp[continuation[0]]), int(np.argmax(lp)) == continuation[0]
    for s in range(0, len(continuation) - 1, CHUNK):
        feed = continuation[s : min(s + CHUNK, len(continuation) - 1)]  # token t's logits predict t + 1
        target = np.asarray(continuation[s + 1 : s + 1 + len(feed)])
        lp = log_softmax(runner.prefill(list(feed)))  # [T, V]
        total += float(lp[np.arange(len(target)), target].sum())
        greedy = greedy and bool((lp.argmax(-1) == target).all())
    return Score(total, greedy)


def _prefill_context(runner: Runner, context: tuple[int, ...]) -> np.ndarray:
    runner.reset()
    return runner.prefill(list(context), all_logits=False)[-1]


def score_requests(runner: Runner, requests: Sequence[Request], shared: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[Score], ScoringStats]:
    """Scores in request order; requests with the same context share one prefill of it when `shared`."""
    stats = ScoringStats(requests=len(requests), shared=shared and can_share(runner))
    if shared and not stats.shared:
        stats.notes.append("from scratch: this program keeps its state inside itself (ExecuTorch runner "
                           "flavour; export --flavor io to share contexts)")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.context, []).append(i)
    stats.contexts = len(groups)
    stats.naive_tokens = sum(len(r.context) + len(r.continuation) - 1 for r in requests)
    scores: list[Score | None] = [None] * len(requests)
    t0, done = time.perf_counter(), 0
    for context, members in groups.items():
        first_row = _prefill_context(runner, context)
        stats.tokens += len(context)
        after_context = runner.snapshot() if stats.shared else None
        for k, i in enumerate(members):
            if k > 0:  # the runner has moved past the context: back to the state right after it
                if after_context is not None:
                    runner.restore(after_context)
                else:
                    first_row = _prefill_context(runner, context)
                    stats.tokens += len(context)
            scores[i] = _continuation(runner, first_row, requests[i].continuation)
            stats.tokens += len(requests[i].continuation) - 1
            done += 1
            if progress:
                progress(done, len(requests))
    stats.seconds = time.perf_counter() - t0
    return scores, stats  # type: ignore[return-value]


def token_agreement(reference: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token, from logits [T, V] of a reference and a candidate over the same tokens: KL(reference ‖
    candidate) in nats and whether their top-1 tokens agree. The one measure quality passes and `eval
    --reference` report (mean, 99th percentile, agreement rate)."""
    ref, got = log_softmax(reference), log_softmax(logits)
    return (np.exp(ref) * (ref - got)).sum(-1), ref.argmax(-1) == got.argmax(-1)


def compare_text(runner: Runner, reference: Runner, tokenizer: Tokenizer, text: str, window: int = 512,
                 max_tokens: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """KL (mean, p99), top-1 agreement and perplexities of `runner` against `reference` on the same tokens.

    Windows as `evaluate_text` cuts them (each from a fresh state, [bos] + window[:-1] predicting the
    window), so `perplexity` here is what `eval` reports for each model alone."""
    if runner.cfg.vocab_size != reference.cfg.vocab_size:
        raise ConfigError(f"the reference's vocabulary ({reference.cfg.vocab_size} tokens) differs from the "
                          f"model's ({runner.cfg.vocab_size}): their distributions cannot be compared",
                          hint="compare with the model's own fp32 source or another artifact of it")
    if window < 2:
        raise ConfigError(f"--window must be >= 2 tokens, got {window}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    ids = tokenizer.encode(text)[:max_tokens]
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    kls, agree, nll = [], [], {"model": 0.0, "reference": 0.0}
    for s in range(0, len(ids), window):
        chunk = ids[s : s + window]
        feed, target = ([bos] + chunk[:-1], chunk) if bos is not None else (chunk[:-1], chunk[1:])
        rows = {}
        for name, r in (("model", runner), ("reference", reference)):
            r.reset()
            rows[name] = r.prefill(feed) if feed else np.zeros((0, runner.cfg.vocab_size), np.float32)
            if not np.isfinite(rows[name]).all():
                raise ArtifactError(f"the {name} produced non-finite logits (NaN or inf) in the window at token {s}")
            nll[name] -= float(log_softmax(rows[name])[np.arange(len(target)), target].sum())
        kl, top1 = token_agreement(rows["reference"], rows["model"])
        kls.append(kl)
        agree.append(top1)
        if progress:
            progress(min(s + window, len(ids)), len(ids))
    kl, top1 = np.concatenate(kls), np.concatenate(agree)
    if not len(kl):
        raise ConfigError("the text has no tokens to score")
    ppl = {k: float(np.exp(v / len(kl))) for k, v in nll.items()}
    return {"tokens": int(len(kl)), "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "top1": float(top1.mean()), "perplexity": ppl["model"], "reference_perplexity": ppl["reference"],
            "delta_ppl": ppl["model"] - ppl["reference"],
            "delta_ppl_pct": 100 * (ppl["model"] / ppl["reference"] - 1), "window": window}
