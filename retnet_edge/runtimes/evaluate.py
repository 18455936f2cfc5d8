"""Perplexity and bits per byte of a runner over a text: windows of [bos] + tokens, every token scored."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..base.tokenizer import Tokenizer
from ..contract import log_softmax
from ..errors import ArtifactError, ConfigError
from . import Runner


def evaluate_text(runner: Runner, tokenizer: Tokenizer, text: str, window: int = 512, max_tokens: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Token-level perplexity (stated tokenizer) and bits per byte over `text`.

    The text is cut into windows of `window` tokens; each window starts from a fresh state with the bos
    token prepended, so every text token is predicted. Bits per byte divide the same total NLL by the
    UTF-8 bytes of the scored text, which makes different tokenizers comparable.
    """
    if window < 2:
        raise ConfigError(f"--window must be >= 2 tokens, got {window}")
    if max_tokens is not None and max_tokens < 1:  # 0 meant "no limit" and -1 "all but one" (issue 14)
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    ids = tokenizer.encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    if not ids:
        raise ConfigError("the text has no tokens to score")
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    nll, n, t0 = 0.0, 0, time.perf_counter()
    for s in range(0, len(ids), window):
        chunk = ids[s : s + window]
        runner.reset()
        logits = runner.prefill([bos] + chunk[:-1]) if bos is not None else None
        if logits is None:  # no bos: the first token of each window is not scored
            logits, chunk = runner.prefill(chunk[:-1]), chunk[1:]
        if not np.isfinite(logits).all():  # a NaN perplexity would print as a number and exit 0
            raise ArtifactError(f"the model produced non-finite logits (NaN or inf) in the window at token {s}; "
                                "its weights or its artifact are broken")
        lp = log_softmax(logits)
        nll -= float(lp[np.arange(len(chunk)), chunk].sum())
        n += len(chunk)
        if progress:
            progress(min(s + window, len(ids)), len(ids))
    n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
    return {"tokens": n, "bytes": n_bytes, "nll_per_token": nll / n, "perplexity": math.exp(nll / n),
            "bits_per_byte": nll / math.log(2) / n_bytes, "window": window, "seconds": time.perf_counter() - t0}
