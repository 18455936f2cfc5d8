"""Calibration text (issue 28 item 2): what `--quant auto` and a calibrated int4 method (`gptq`) measure on.

Where it comes from, first that exists: `--calibration FILE` (plain UTF-8 text, or JSONL with a "text" field
per line); else the model directory's held-out text (`heldout.txt`); else (gptq) text the fp32 model
samples from itself, or (`--quant auto`) the gate's fixed validation text. Token ids come back as windows
of WINDOW tokens, each opened by the model's BOS, plus a line saying where they came from (the manifest
records it).

Held-out text is read from its end for gptq: the quality pass and the benchmarks score a model's held-out
text from its start, so the weights are not fitted to the tokens they are then judged on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..base.confine import read_bounded
from ..base.io_utils import jsonl_objects
from ..checkpoints.streaming import ModelWeights
from ..errors import ConfigError, ExportError

CALIBRATION_MAX_BYTES = 64 * 2**20  # a text file, not a corpus: the tokens used are a few thousand
WINDOW = 512
HELDOUT_FILE = "heldout.txt"
SAMPLED_LENGTH = 128  # tokens per sampled sequence; the sequences are sampled as one batch
# at most this many tokens are sampled, whatever was asked: each sampled position reads the checkpoint once, and
# each sequence holds a recurrent state (`small`: 24 MB, so 32 sequences ~0.8 GB, the export's own peak)
SAMPLED_MAX_TOKENS = 4096


def read_calibration(path: str | Path) -> str:
    """The text of a calibration file: plain UTF-8, or JSONL whose lines are objects with a "text" string.

    Raises ConfigError (one line) for a missing, empty, binary or malformed file."""
    data = read_bounded(path, "calibration file", CALIBRATION_MAX_BYTES, ConfigError)
    if b"\0" in data:
        raise ConfigError(f"calibration file {path} is binary (it has NUL bytes); expected UTF-8 text or JSONL")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"calibration file {path} is not UTF-8 text (byte {exc.start}); expected text or "
                          "JSONL") from exc
    if str(path).lower().endswith(".jsonl"):
        parts = []
        for n, obj in jsonl_objects(text, f"calibration file {path}", ConfigError):
            if not (isinstance(obj, dict) and isinstance(obj.get("text"), str)):
                raise ConfigError(f"calibration file {path} line {n} has no \"text\" string")
            parts.append(obj["text"])
        text = "\n".join(parts)
    if not text.strip():
        raise ConfigError(f"calibration file {path} has no text")
    return text


def _windows(ids: list[int], n_tokens: int, bos: int | None, source: str, from_end: bool) -> np.ndarray:
    """[n, WINDOW] from ids: n = n_tokens / window (at least 1), from the start or the end of the text."""
    width = WINDOW - (bos is not None)
    if len(ids) < width:
        raise ConfigError(f"calibration text ({source}) has {len(ids)} tokens; at least {width} are needed")
    n = max(1, min(n_tokens, len(ids)) // width)
    if from_end:
        ids = ids[len(ids) - n * width:]
    rows = [([bos] if bos is not None else []) + ids[i * width:(i + 1) * width] for i in range(n)]
    return np.array(rows, dtype=np.int64)


def calibration_ids(weights: ModelWeights, tokenizer, calibration: str | None, n_tokens: int,
                    fallback: str = "validation", log=lambda s: None, skip_gptq: int = 0) -> tuple[np.ndarray, str]:
    """[windows, WINDOW] int64 token ids (about n_tokens) and where they came from. `fallback` when there is
    neither a file nor held-out text: "validation" (the gate's fixed text) or "sample" (the model's own text;
    held-out text is then read from its end, see the module docstring). skip_gptq (with fallback "sample"):
    leave out the skip_gptq tokens gptq reads — held-out text's last ones, a file's first ones — where the
    text has enough, else say it (`--quant auto` measures a gptq mix on tokens gptq did not fit)."""
    from .validate import VALIDATION_TEXT

    from_end = fallback == "sample"
    if tokenizer is None:
        if calibration or fallback != "sample":
            raise ConfigError("calibration text needs the model's tokenizer (the model directory has none)")
        bos = weights.cfg.bos_id if weights.cfg.bos_id is not None else weights.cfg.eos_id
        ids = sampled_ids(weights, n_tokens, bos)
        return ids, f"text the fp32 model sampled ({ids.size} tokens; the model has no tokenizer)"
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if calibration:
        text, source = read_calibration(calibration), str(Path(calibration).resolve())
    elif heldout_file(weights) is not None:
        text = read_calibration(heldout_file(weights))
        source = HELDOUT_FILE + (" (from its end)" if from_end else "")
    elif fallback == "sample":
        log(f"  no calibration text (--calibration FILE, or {HELDOUT_FILE} beside the model): sampling "
            f"{min(n_tokens, SAMPLED_MAX_TOKENS)} tokens from the fp32 model ...")
        ids = sampled_ids(weights, n_tokens, bos)
        return ids, f"text the fp32 model sampled ({ids.size} tokens)"
    else:
        text, source = VALIDATION_TEXT * 64, "the gate's validation text"
    tokens = tokenizer.encode(text)
    if skip_gptq and from_end and (calibration or source.startswith(HELDOUT_FILE)):
        if len(tokens) - skip_gptq >= WINDOW:
            tokens, source = ((tokens[skip_gptq:], f"{source} (after its first {skip_gptq:,} tokens)") if calibration
                              else (tokens[:-skip_gptq], f"{HELDOUT_FILE} (before its last {skip_gptq:,} tokens)"))
        else:
            log(f"  note: the calibration text ({len(tokens):,} tokens) is too short to measure on tokens gptq did "
                f"not fit ({skip_gptq:,} + {WINDOW}); the measured KL reads low")
    ids = _windows(tokens, n_tokens, bos, source, from_end and not calibration)
    got = ids.shape[0] * (ids.shape[1] - (bos is not None))
    if got < n_tokens // 2:
        log(f"  note: the calibration text ({source}) has {got:,} tokens of the {n_tokens:,} asked; the result "
            "fits that text more closely than a longer one would")
    return ids, f"{source} ({got} tokens)"


def heldout_file(weights: ModelWeights) -> Path | None:
    """The model directory's held-out text, where one is there (inside the model's directory after symlinks)."""
    from ..checkpoints.tensors import checkpoint_file

    directory = Path(weights.path)
    if not (directory.is_dir() and (directory / HELDOUT_FILE).is_file()):
        return None
    return checkpoint_file(directory, HELDOUT_FILE, "held-out text")


def has_text(weights: ModelWeights, calibration: str | None) -> bool:
    """Whether calibration would read text (a file, or the model's held-out text) rather than sample."""
    return bool(calibration) or heldout_file(weights) is not None


@torch.no_grad()
def sampled_ids(weights: ModelWeights, n_tokens: int, bos: int | None, seed: int = 0) -> np.ndarray:
    """[n, SAMPLED_LENGTH] tokens the fp32 model samples from itself (temperature 1, from BOS), all sequences
    one batch, the checkpoint read layer by layer per token (`StreamedStack`: the export's memory bound)."""
    from ..checkpoints.streaming import StreamedStack
    from ..core.retention import StepCore

    stack = StreamedStack(weights)
    n = max(1, min(n_tokens, SAMPLED_MAX_TOKENS) // SAMPLED_LENGTH)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), bos if bos is not None else 0, dtype=torch.long)
    state = stack.init_state(n)
    gamma = torch.exp(stack.log_gamma).view(1, -1, 1, 1)
    for t in range(SAMPLED_LENGTH - 1):
        positions = torch.full((n, 1), t)
        core = StepCore(gamma, stack.log_gamma, positions, weights.cfg.normalize)  # eq. 6: the state once a token
        logits, state = stack.run(ids[:, -1:], positions, core, state)  # [n, 1, V]
        if not torch.isfinite(logits).all():
            raise ExportError("the fp32 model's logits are NaN or inf while it samples calibration text: the "
                              "checkpoint has non-finite weights",
                              hint="check the checkpoint, or pass --calibration FILE")
        probs = torch.softmax(logits[:, -1].double(), -1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
    return ids.numpy()
