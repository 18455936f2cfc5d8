"""Long-run stability: a runner's recurrent steps against the chunkwise form, at checkpoints up to N steps.

The runner consumes a seeded token stream one step at a time (its step graph, the state in place); the
eager chunkwise form consumes the same stream in long chunks, carrying its own state. At each checkpoint
both sets of logits for the same position are compared (max |Δ| relative to max |logit|), the state is
checked finite, and resident memory is sampled: a RetNet's must stay flat.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def long_run(runner, model, steps: int, checkpoints: list[int], chunk: int = 2048, seed: int = 0,
             log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Records per checkpoint: {step, max_rel, finite, rss_mb, runner_ms_per_step}."""
    import torch

    from .measure import memory_mb

    rng = np.random.default_rng(seed)
    vocab = runner.cfg.vocab_size
    marks = sorted(c for c in checkpoints if 0 < c <= steps)
    runner.reset()
    ref_state, done, out, t_run = None, 0, [], 0.0
    for mark in marks:
        while done < mark:
            n = min(chunk, mark - done)
            ids = rng.integers(3, vocab, n)
            t = time.perf_counter()
            for tok in ids[:-1]:
                runner.step(int(tok))
            got = runner.step(int(ids[-1]))
            t_run += time.perf_counter() - t
            with torch.no_grad():
                logits, ref_state = model.forward_chunkwise(torch.from_numpy(ids[None].astype(np.int64)), chunk_size=512,
                                                            state=ref_state, start_pos=done, return_state=True)
            ref = logits[0, -1].double().numpy()
            done += n
        state = runner.state
        rec = {"step": done, "max_rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
               "finite": bool(np.isfinite(got).all() and all(np.isfinite(s).all() for s in state)),
               "rss_mb": round(memory_mb().get("rss", 0.0), 1), "runner_ms_per_step": round(t_run / done * 1e3, 4)}
        out.append(rec)
        log(f"step {done:,}: max rel {rec['max_rel']:.2e}, finite {rec['finite']}, RSS {rec['rss_mb']} MiB, "
            f"{rec['runner_ms_per_step']} ms/step")
    return out
