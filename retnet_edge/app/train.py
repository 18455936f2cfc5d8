"""A compact, honest trainer for RetNet on the parallel form: AdamW, warmup + cosine, grad clipping,
bf16 autocast on GPU, held-out eval, resumable checkpoints; writes the native format with its tokenizer
and a model card. Runs on torch 2.11 (the GPU machine) and 2.13.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..base.confine import regular_file
from ..base.tokenizer import load_tokenizer, train_bpe
from ..checkpoints.native import save_pretrained
from ..core.config import RetNetConfig
from ..core.model import RetNet
from ..errors import ConfigError, RetNetEdgeError


@dataclass
class TrainConfig:
    """Optimisation settings (defaults suit a ~20M model on a few million tokens)."""

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 512
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup: int = 100
    weight_decay: float = 0.1  # matrices only; norms are not decayed
    grad_clip: float = 1.0
    dropout: float = 0.1  # residual dropout, training only
    eval_every: int = 100
    eval_windows: int = 64
    val_every: int = 50  # every val_every-th document is the trainer's validation split
    save_every: int = 500
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        """Refuse absurd settings before any file is written (issue 14: they failed after training)."""
        positive = {"steps": self.steps, "batch_size": self.batch_size, "seq_len": self.seq_len,
                    "eval_every": self.eval_every, "eval_windows": self.eval_windows, "val_every": self.val_every,
                    "save_every": self.save_every}
        bad = [f"{k}={v}" for k, v in positive.items() if not (isinstance(v, int) and v > 0)]
        bad += [f"{k}={v}" for k, v in {"lr": self.lr, "grad_clip": self.grad_clip}.items()
                if not (math.isfinite(v) and v > 0)]
        bad += [f"{k}={v}" for k, v in {"dropout": self.dropout, "min_lr_ratio": self.min_lr_ratio,
                                        "weight_decay": self.weight_decay}.items() if not (0 <= v <= 1)]
        bad += [f"warmup={self.warmup}"] if self.warmup < 0 else []
        bad += [f"seed={self.seed}"] if self.seed < 0 else []
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            bad.append(f"device={self.device!r} (cpu, cuda[:N] or mps)")
        if bad:
            raise ConfigError("invalid training settings: " + ", ".join(bad))


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def split_documents(text: str, val_every: int) -> tuple[list[str], list[str]]:
    """Documents are separated by blank lines; every val_every-th one goes to validation."""
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    if len(docs) < 2:
        raise RetNetEdgeError("the corpus needs at least two documents separated by a blank line")
    val = docs[val_every - 1 :: val_every] or docs[-1:]
    train = [d for i, d in enumerate(docs) if (i % val_every != val_every - 1)] if len(docs) >= val_every else docs[:-1]
    return train, val


def token_stream(docs: list[str], tok) -> Tensor:
    """[bos] doc [eos] for every document, concatenated into one int64 stream."""
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d, add_bos=True, add_eos=True)
    return torch.tensor(ids, dtype=torch.long)


def loss_fn(model: RetNet, batch: Tensor) -> Tensor:
    logits = model(batch[:, :-1])  # [B, T, V]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def evaluate_stream(model: RetNet, stream: Tensor, seq_len: int, windows: int, device: str) -> float:
    """Mean loss over evenly spaced, fixed windows of the validation stream."""
    model.eval()
    n = max(1, min(windows, (len(stream) - 1) // seq_len))
    starts = torch.linspace(0, len(stream) - seq_len - 2, n).long()
    batch = torch.stack([stream[s : s + seq_len + 1] for s in starts]).to(device)
    with _autocast(device):
        loss = sum(loss_fn(model, b) for b in batch.split(16)) / len(batch.split(16))
    model.train()
    return float(loss)


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)


def _optimizer(model: RetNet, tc: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))


def train(corpus: Path, output: Path, model_cfg: dict, tc: TrainConfig, tokenizer: Path | None = None,
          vocab_size: int = 4096, resume: bool = True, force: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Train on a text corpus and write the native model (best validation loss) to `output`."""
    tc.check()
    if Path(output).exists() and not force:  # before training, not after every step of it
        raise RetNetEdgeError(f"{output} already exists", hint="pass --force to overwrite it")
    regular_file(corpus, "corpus")  # a FIFO would block the read, a device never end it
    work = Path(str(output) + ".work")  # resumable state lives beside the output
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _train(corpus, output, work, model_cfg, tc, tokenizer, vocab_size, resume, force, log)
    except BaseException:
        if created and not (work / "state.pt").exists():  # nothing resumable: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise


def _train(corpus: Path, output: Path, work: Path, model_cfg: dict, tc: TrainConfig, tokenizer: Path | None,
           vocab_size: int, resume: bool, force: bool, log: Callable[[str], None]) -> dict:
    train_docs, val_docs = split_documents(Path(corpus).read_text(encoding="utf-8"), tc.val_every)
    tok_path = work / "tokenizer.json"
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        tok_path = Path(tokenizer)
    elif tok_path.exists() and resume:
        tok = load_tokenizer(tok_path)
    else:
        tok = train_bpe(train_docs, vocab_size, tok_path)
    train_ids, val_ids = token_stream(train_docs, tok), token_stream(val_docs, tok)
    log(f"corpus: {len(train_docs)} train docs ({len(train_ids):,} tokens), {len(val_docs)} val docs "
        f"({len(val_ids):,} tokens), vocab {tok.vocab_size}")
    cfg = RetNetConfig(**{**model_cfg, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                          "pad_id": 0})
    torch.manual_seed(tc.seed)
    model = RetNet(cfg).init_weights(0.02).to(tc.device)
    model.dropout_p = tc.dropout
    opt = _optimizer(model, tc)
    state_file, history, step, best = work / "state.pt", [], 0, (float("inf"), None)
    if resume and state_file.exists():
        saved = torch.load(state_file, weights_only=True, map_location=tc.device)
        model.load_state_dict(saved["model"]), opt.load_state_dict(saved["optim"])
        step, history = saved["step"], json.loads(saved["history"])
        best = (saved["best_loss"], saved["best_model"])
        log(f"resumed at step {step}")
    gen = torch.Generator().manual_seed(tc.seed + step)
    model.train()
    t0, tokens_seen = time.time(), 0
    while step < tc.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        starts = torch.randint(0, len(train_ids) - tc.seq_len - 1, (tc.batch_size,), generator=gen)
        batch = torch.stack([train_ids[s : s + tc.seq_len + 1] for s in starts]).to(tc.device)
        with _autocast(tc.device):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        tokens_seen += batch.numel()
        if step % tc.eval_every == 0 or step == tc.steps:
            val = evaluate_stream(model, val_ids, tc.seq_len, tc.eval_windows, tc.device)
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4),
                            "lr": lr_at(step - 1, tc), "grad_norm": round(float(gnorm), 3)})
            if val < best[0]:
                best = (val, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            rate = tokens_seen / (time.time() - t0)
            log(f"step {step}/{tc.steps}  train {loss.item():.3f}  val {val:.3f}  best {best[0]:.3f}  {rate:,.0f} tok/s")
        if step % tc.save_every == 0 or step == tc.steps:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                        "history": json.dumps(history), "best_loss": best[0], "best_model": best[1]},
                       work / "state.tmp")
            (work / "state.tmp").replace(state_file)
    final = RetNet(cfg)
    final.load_state_dict(best[1])
    summary = {"parameters": final.num_parameters(), "train_tokens": len(train_ids), "val_tokens": len(val_ids),
               "steps": tc.steps, "tokens_trained": tc.steps * tc.batch_size * tc.seq_len,
               "best_val_loss": round(best[0], 4), "history": history, "train_config": dataclasses.asdict(tc),
               "device": tc.device, "torch": torch.__version__}
    (work / "train_log.json").write_text(json.dumps(summary, indent=2))
    extra = {tok.file_name: tok_path, "train_log.json": work / "train_log.json"}
    save_pretrained(final, output, dtype="fp16" if tc.device.startswith("cuda") else "fp32", force=force,
                          extra_files=extra)
    return summary
