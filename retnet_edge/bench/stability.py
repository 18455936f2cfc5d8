"""Long-run stability: a runner's recurrent steps against the chunkwise form, at checkpoints up to N steps.

The runner consumes a seeded token stream one step at a time (its step graph, the state in place); the
eager chunkwise form consumes the same stream in long chunks, carrying its own state. At each checkpoint
both sets of logits for the same position are compared (max |Δ| relative to max |logit|), the state is
checked finite, and resident memory is sampled: a RetNet's must stay flat.

The two halves are separate functions over the same `token_chunks` so that a benchmark can run the
reference in another process: then the runner's process holds no torch and its resident memory is the
runner's own (benchmarks/long_run.py).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np

CHUNK = 2048  # tokens per reference call (and per runner stretch between clock reads)


def marks_upto(steps: int, checkpoints: list[int]) -> list[int]:
    """The checkpoints that fall in 1..steps, and `steps` itself, sorted."""
    return sorted({c for c in checkpoints if 0 < c < steps} | {steps})


def token_chunks(vocab: int, marks: list[int], chunk: int = CHUNK, seed: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(tokens done before, ids [n] int64) pieces of one seeded stream; every mark ends a piece."""
    rng, done = np.random.default_rng(seed), 0
    for mark in marks:
        while done < mark:
            n = min(chunk, mark - done)
            yield done, rng.integers(3, vocab, n)
            done += n


def reference_logits(model, marks: list[int], chunk: int = CHUNK, seed: int = 0) -> dict[int, np.ndarray]:
    """{mark: eager chunkwise logits [V] float64 of the token at position mark-1} over the seeded stream."""
    import torch

    state, out = None, {}
    with torch.no_grad():
        for done, ids in token_chunks(model.cfg.vocab_size, marks, chunk, seed):
            logits, state = model.forward_chunkwise(torch.from_numpy(ids[None].astype(np.int64)), chunk_size=512,
                                                    state=state, start_pos=done, return_state=True)
            if done + len(ids) in marks:
                out[done + len(ids)] = logits[0, -1].double().numpy()
    return out


def runner_records(runner, marks: list[int], reference: Callable[[int], np.ndarray] | None = None,
                   chunk: int = CHUNK, seed: int = 0, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Run the stream through `runner.step`; per mark {step, finite, rss_mb, runner_ms_per_step, logits}
    and, when `reference(mark)` gives the eager logits, max_rel."""
    from .measure import memory_mb

    runner.reset()
    out, t_run = [], 0.0
    for done, ids in token_chunks(runner.cfg.vocab_size, marks, chunk, seed):
        t = time.perf_counter()
        for tok in ids[:-1]:
            runner.step(int(tok))
        got = runner.step(int(ids[-1]))
        t_run += time.perf_counter() - t
        step = done + len(ids)
        if step not in marks:
            continue
        state = runner.state
        rec = {"step": step, "finite": bool(np.isfinite(got).all() and all(np.isfinite(s).all() for s in state)),
               "state_checked": bool(state), "rss_mb": round(memory_mb().get("rss", 0.0), 1),
               "runner_ms_per_step": round(t_run / step * 1e3, 4)}
        if reference is not None:
            ref = reference(step)
            rec["max_rel"] = float(np.abs(got - ref).max() / np.abs(ref).max())
        else:
            rec["logits"] = np.asarray(got, np.float64)
        out.append(rec)
        log(f"step {step:,}: " + (f"max rel {rec['max_rel']:.2e}, " if "max_rel" in rec else "")
            + f"finite {rec['finite']}, RSS {rec['rss_mb']} MiB, {rec['runner_ms_per_step']} ms/step")
    return out


def long_run(runner, model, steps: int, checkpoints: list[int], chunk: int = CHUNK, seed: int = 0,
             log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Records per checkpoint: {step, max_rel, finite, state_checked, rss_mb, runner_ms_per_step}, in one
    process (the reference first, then the runner)."""
    marks = marks_upto(steps, checkpoints)
    ref = reference_logits(model, marks, chunk, seed)
    return runner_records(runner, marks, ref.__getitem__, chunk, seed, log)
