"""The generic validation gate: run an artifact and eager PyTorch on the same tokens, carrying state.

Two checks per batch size: (1) N teacher-forced steps through the step graph from a zero state;
(2) a chunked prefill of most of the sequence, then steps — the prompt-to-decode hand-off. Logits are
compared with eager fp32 (max relative error, top-1 agreement, mean KL). Every failing check is
collected and reported at once, naming the check and its numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..base.io_utils import release_freed_memory
from ..contract import StepSession, log_softmax
from ..contract.quant import QuantConfig
from ..errors import ParityError
from .divergence import DIVERGES_AT, relative_difference

VALIDATION_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness. And God said, Let there be light: and there was light. Call me Ishmael. Some years ago, "
    "never mind how long precisely, having little or no money in my purse, I thought I would sail about a "
    "little and see the watery part of the world. The quick brown fox jumps over the lazy dog; 1, 2, 3.")


# Top-1 agreement is judged where eager is confident: its top-1 log-prob leads the runner-up by at least
# CONFIDENT_MARGIN nats. Where eager's logits are near-flat (deep random-weight models) the argmax is a
# coin toss that any rounding flips; with fewer than MIN_CONFIDENT such positions the check says n/a and
# the KL limits decide. With a rounded reference (quantized exports), only the confident positions where eager
# with the rounded weights keeps eager's argmax count: on a trained model that is nearly all of them, while
# a deep random 7B-shaped network is chaotic enough that rounding alone flips its few "confident" argmaxes
# (measured: 11 such positions, rounding kept 0), which no artifact of those weights can be asked to keep.
CONFIDENT_MARGIN = 1.0
MIN_CONFIDENT = 8
# A quantized artifact may reach KL_FACTOR x the KL that the same weight rounding gives in eager PyTorch
# (`fake_quant.py`) when that is above the scheme's fixed limit: rounding noise is the model's own
# yardstick. Measured: see quant.py's TOLERANCES and each gate check's `rounding_kl` in the export records
# (benchmarks/results/export_memory_small_streamed.json, export_memory_7b.json).
KL_FACTOR = 4.0
# Likewise each layer's state may differ from eager's by STATE_FACTOR x what the rounding alone does to it
# (deep random layers at int4 reach 0.8 relative from rounding alone; a trained model's stay near 0.1).
STATE_FACTOR = 2.0


@dataclass
class CheckResult:
    name: str
    tokens: int
    max_rel: float
    max_abs: float
    top1: float
    kl: float
    finite: bool = True
    confident: int = 0  # positions where eager's top-1 leads by >= CONFIDENT_MARGIN nats (and rounding keeps it)
    top1_confident: float | None = None  # agreement there (None: fewer than MIN_CONFIDENT positions)
    rounding_kl: float | None = None  # KL(eager fp32 || eager with the rounded weights)

    def to_dict(self) -> dict:
        return {k: (round(v, 8) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


# An fp32 artifact is judged against max(1e-5, NOISE_FACTOR x the reference's own noise floor): the max rel
# difference between two exact-arithmetic-equal eager paths (step loop vs chunk graph) on the same tokens.
# Trained models sit near 1e-6, far below 1e-5; deep random models do not: on the 270M `small` preset with
# std-0.02 weights, eager PyTorch at batch 3 vs batch 1 already differs by 1.9e-4 (the per-head norm
# amplifies cancellation in q·k at early positions), so no artifact could meet a flat 1e-5.
NOISE_FACTOR = 10.0


@dataclass
class ValidationReport:
    quant: dict
    checks: list[CheckResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    noise_floor: float = 0.0
    unchecked: list[str] = field(default_factory=list)  # artifact files the gate could not run here, and why

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"passed": self.passed, "quant": self.quant, "failures": self.failures,
                "reference_noise_floor": float(f"{self.noise_floor:.3e}"), "checks": [c.to_dict() for c in self.checks],
                **({"unchecked": self.unchecked} if self.unchecked else {})}


def validation_tokens(vocab_size: int, batch: int, length: int, tokenizer=None, seed: int = 0) -> np.ndarray:
    """[batch, length] int64: real text through the model's tokenizer when there is one, else seeded ids."""
    rng = np.random.default_rng(seed)
    if tokenizer is not None:
        ids = tokenizer.encode(VALIDATION_TEXT * 4)
        if len(ids) >= length + batch * 7:
            return np.stack([np.array(ids[7 * b : 7 * b + length]) for b in range(batch)]).astype(np.int64)
    return rng.integers(0, vocab_size, (batch, length), dtype=np.int64)


def _kl(lp: np.ndarray, lq: np.ndarray) -> float:
    return max(float((np.exp(lp) * (lp - lq)).sum(-1).mean()), 0.0)


def compare(name: str, ref: np.ndarray, got: np.ndarray, rounded: np.ndarray | None = None) -> CheckResult:
    """Metrics of logits got vs ref, both [..., V] (and ref vs `rounded`, eager with the rounded weights). A
    non-finite logit on either side is a failure of every metric (inf / top-1 0), never a NaN that
    compares False against its limit and passes."""
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):
        return CheckResult(name, int(np.prod(ref.shape[:-1])), float("inf"), float("inf"), 0.0, float("inf"),
                           finite=False, top1_confident=0.0)
    diff = np.abs(got.astype(np.float64) - ref)
    lp, lq = log_softmax(ref), log_softmax(got)
    agree = ref.argmax(-1) == got.argmax(-1)
    top2 = np.sort(lp, axis=-1)[..., -2:]
    confident = (top2[..., 1] - top2[..., 0]) >= CONFIDENT_MARGIN
    if rounded is not None:  # and where the weight rounding alone keeps eager's choice (see CONFIDENT_MARGIN)
        confident &= rounded.argmax(-1) == ref.argmax(-1)
    n_conf = int(confident.sum())
    return CheckResult(name, int(np.prod(ref.shape[:-1])), float(diff.max() / np.abs(ref).max()), float(diff.max()),
                       float(agree.mean()), _kl(lp, lq), confident=n_conf,
                       top1_confident=float(agree[confident].mean()) if n_conf >= MIN_CONFIDENT else None,
                       rounding_kl=_kl(lp, log_softmax(rounded)) if rounded is not None else None)


def _run_steps(session: StepSession, ids: np.ndarray, state, start: int = 0) -> tuple[np.ndarray, list]:
    B, T = ids.shape
    outs = []
    for t in range(T):
        pos = np.full((B, 1), start + t, dtype=np.int64)
        logits, state = session.run_step(ids[:, t : t + 1], pos, state)
        outs.append(logits)
    return np.concatenate(outs, axis=1), state


class SessionReference:
    """A StepSession as the gate's reference: `steps` (the step loop from a zero state) and `prompt`."""

    def __init__(self, session: StepSession):
        self.session = session

    def steps(self, ids: np.ndarray) -> tuple[np.ndarray, list]:
        return _run_steps(self.session, ids, self.session.init_state(ids.shape[0]))

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        pos = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy()
        return self.session.run_prefill(ids, pos, self.session.init_state(B))[0]

    def states_at(self, ids: np.ndarray, positions: list[int]) -> dict[int, list[np.ndarray]]:
        """{p: the state per layer after ids[:, :p]}, from one step loop."""
        out, state = {}, self.session.init_state(ids.shape[0])
        for t in range(max(positions)):
            _, state = self.session.run_step(ids[:, t : t + 1], np.full((ids.shape[0], 1), t, dtype=np.int64), state)
            if t + 1 in positions:
                out[t + 1] = [np.array(s, copy=True) for s in state]
        return out


def as_reference(x):
    """A reference with steps()/prompt() (exporters/reference.py) as it is; a StepSession wrapped."""
    return x if x is None or hasattr(x, "steps") else SessionReference(x)


def validate(reference, candidate: StepSession, qc: QuantConfig, vocab_size: int,
             steps: int = 64, batches: tuple[int, ...] | None = None, tokenizer=None,
             rounded=None) -> ValidationReport:
    """Run both sessions on the same tokens (at every batch size the candidate runs); check each result
    against the scheme's tolerance.

    `rounded` is eager with the plan's rounded weights (`fake_quant.fake_quantize`): its KL to eager fp32
    widens the KL limit of a quantized artifact to KL_FACTOR x that (never below the fixed limit). `reference`
    and `rounded` are StepSessions (eager) or layer-streamed references (`reference.StreamedReference`). Where the
    candidate's state is readable, each layer's state after the step loop must stay within
    `divergence.DIVERGES_AT` of eager's (a lost or corrupted state)."""
    report = ValidationReport(quant=qc.to_dict())
    reference, rounded = as_reference(reference), as_reference(rounded)
    batches = batches or candidate.batch_sizes
    tol = qc.tolerance
    state_limit = DIVERGES_AT[qc.scheme.value]
    split = (3 * steps) // 4
    release = candidate.release  # sessions that can drop and reopen their graphs do
    check_state = not candidate.state_in_program
    # the eager side first, then the candidate one graph at a time: at scale (7B) the artifact's sessions
    # and the reference's working memory are never resident together; of the reference only its logits,
    # its final states and the rounding's own state error are kept
    release()
    refs: dict[int, tuple] = {}
    for B in batches:
        ids = validation_tokens(vocab_size, B, steps, tokenizer, seed=B)
        ref, ref_state = reference.steps(ids)
        exp, exp_state = rounded.steps(ids) if rounded is not None else (None, None)
        own = ([relative_difference(a, b) for a, b in zip(ref_state, exp_state)] if exp_state is not None
               else [0.0] * len(ref_state))
        del exp_state
        noise = compare("noise", ref[:, :split], reference.prompt(ids[:, :split]))
        report.noise_floor = max(report.noise_floor, noise.max_rel if noise.finite else 0.0)
        refs[B] = (ids, ref, ref_state if check_state else None, exp, own)
    release_freed_memory()
    for B in batches:
        ids, ref, ref_state, exp, own = refs[B]
        got, got_state = _run_steps(candidate, ids, candidate.init_state(B))
        report.checks.append(compare(f"step x{steps} (batch {B})", ref, got, exp))
        if ref_state is not None:
            for layer, (rel, r_own) in enumerate(zip((relative_difference(a, b) for a, b in zip(ref_state, got_state)), own)):
                limit = max(state_limit, STATE_FACTOR * r_own)
                if not rel <= limit:  # NaN fails too
                    report.failures.append(f"step x{steps} (batch {B}): the recurrent state of layer {layer} "
                                           f"differs from eager's by {rel:.2e} (relative; limit {limit:.1e})")
        refs[B] = (ids, ref, None, exp, own)
        del got_state
    release()
    for variant in candidate.step_graph_variants:  # the other step graphs a runner may pick
        default = candidate.use_step_graph(variant)
        for B in batches:
            ids, ref, _, exp, _ = refs[B]
            got, _ = _run_steps(candidate, ids, candidate.init_state(B))
            report.checks.append(compare(f"step x{steps} (batch {B}, {variant})", ref, got, exp))
        candidate.use_step_graph(default)
    for variant in (None, *candidate.prompt_graph_variants):  # the prompt weights a runner may pick
        if variant and candidate.unchecked_files():  # the default prompt ran the stored graph: checked already
            report.unchecked.append(f"{', '.join(candidate.unchecked_files())}: {candidate.unchecked_reason()}")
            break
        default = candidate.use_prompt_graph(variant) if variant else None
        prompts = {}
        for B in batches:
            pos = np.broadcast_to(np.arange(split, dtype=np.int64), (B, split)).copy()
            prompts[B] = candidate.run_prefill(refs[B][0][:, :split], pos, candidate.init_state(B))
        release()
        for B in batches:
            ids, ref, _, exp, _ = refs[B]
            pre, state = prompts.pop(B)
            rest, _ = _run_steps(candidate, ids[:, split:], state, start=split)
            label = f"batch {B}, {variant} prompt weights" if variant else f"batch {B}"
            report.checks.append(compare(f"prefill {split} + step x{steps - split} ({label})", ref,
                                         np.concatenate([pre, rest], axis=1), exp))
        release()
        if default:
            candidate.use_prompt_graph(default)
    report.checks.sort(key=lambda c: (c.name.split("(batch ")[1], not c.name.startswith("step")))
    max_rel = max(tol.max_rel, NOISE_FACTOR * report.noise_floor) if tol.max_rel is not None else None
    for c in report.checks:
        problems = [] if c.finite else ["non-finite logits (NaN or inf) from the model or the artifact"]
        if max_rel is not None and c.max_rel > max_rel:
            problems.append(f"logits max rel diff {c.max_rel:.2e} > {max_rel:.1e} (max abs {c.max_abs:.2e}; "
                            f"eager's own noise floor {report.noise_floor:.1e})")
        if c.top1_confident is not None and c.top1_confident < tol.min_top1:
            problems.append(f"top-1 agreement {c.top1_confident:.3f} < {tol.min_top1} where eager is confident "
                            f"({c.confident} of {c.tokens} positions)")
        kl_limit = kl_limit_of(tol.max_kl, c.rounding_kl)
        if not c.kl <= kl_limit:
            problems.append(f"KL {c.kl:.2e} > {kl_limit:.1e}" + (
                f" ({KL_FACTOR:g} x the weight rounding's own KL {c.rounding_kl:.1e})" if kl_limit > tol.max_kl else ""))
        if problems:
            report.failures.append(f"{c.name}: " + ", ".join(problems))
    return report


def kl_limit_of(fixed: float, rounding_kl: float | None) -> float:
    return max(fixed, KL_FACTOR * rounding_kl) if rounding_kl is not None and np.isfinite(rounding_kl) else fixed


def raise_if_failed(report: ValidationReport, artifact: str, exporting: bool = True) -> None:
    if not report.passed:
        hint = ("nothing was written; see the numbers above or try a less aggressive --quant" if exporting else
                "the artifact disagrees with its source model: re-export it, or check that --model is its source")
        raise ParityError(f"{artifact} failed validation ({report.quant['scheme']}): " + "; ".join(report.failures),
                          hint=hint)
