"""Quality of an exported artifact against its fp32 source, in the units a user judges a model by.

Perplexity on the model's held-out text when the model directory ships one (`heldout.txt`, the demo
does); otherwise the fp32 model writes its own text (sampled at temperature 1, so it is not a greedy
loop) and the artifact is scored against eager fp32 on it: mean KL(fp32 ‖ artifact) and top-1 agreement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.tokenizer import Tokenizer
from ..contract import log_softmax
from ..runtimes import Runner
from ..runtimes.evaluate import evaluate_text
from ..runtimes.scoring import token_agreement

HELDOUT_FILE = "heldout.txt"
QUALITY_TOKENS = 4096  # held-out tokens scored per artifact (the demo's full text is ~60k: minutes each)
STREAM_TOKENS = 256  # tokens of the fp32 model's own text when there is no held-out text


def heldout_text(model_dir: Path) -> Path | None:
    p = Path(model_dir) / HELDOUT_FILE
    return p if p.is_file() else None


def perplexity(runner: Runner, tokenizer: Tokenizer, text: str, max_tokens: int = QUALITY_TOKENS) -> dict:
    r = evaluate_text(runner, tokenizer, text, window=512, max_tokens=max_tokens)
    return {"metric": "perplexity", "perplexity": r["perplexity"], "bits_per_byte": r["bits_per_byte"],
            "tokens": r["tokens"]}


def reference_stream(reference: Runner, start: int, n: int = STREAM_TOKENS, seed: int = 0) -> list[int]:
    """n tokens the fp32 reference samples from itself after `start` (temperature 1)."""
    rng = np.random.default_rng(seed)
    reference.reset()
    ids = [start]
    logits = reference.prefill(ids)[-1]
    for _ in range(n - 1):
        p = np.exp(log_softmax(logits[None])[0])
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
        logits = reference.step(ids[-1])
    return ids


def agreement(reference: Runner, runner: Runner, ids: list[int]) -> dict:
    """Mean KL(reference ‖ artifact) and top-1 agreement over teacher-forced `ids`."""
    reference.reset()
    runner.reset()
    kl, top1 = token_agreement(reference.prefill(ids), runner.prefill(ids))  # logits [T, V] each
    return {"metric": "agreement", "kl": float(kl.mean()), "top1": float(top1.mean()), "tokens": len(ids)}
