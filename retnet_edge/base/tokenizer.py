"""One small tokenizer interface over HF `tokenizers` (tokenizer.json) and SentencePiece (tokenizer.model)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer as _HF
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..errors import CheckpointError
from .confine import TOKENIZER_MAX_BYTES, regular_file

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 in tokenizers we train


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    file_name: str

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def _with_specials(ids: list[int], bos: int | None, eos: int | None, add_bos: bool, add_eos: bool) -> list[int]:
    return ([bos] if add_bos and bos is not None else []) + ids + ([eos] if add_eos and eos is not None else [])


@dataclass
class HFTokenizer:
    """A `tokenizers` tokenizer.json; bos/eos found among its special tokens."""

    tok: object
    file_name: str = "tokenizer.json"

    def __post_init__(self) -> None:
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = next((vocab[t] for t in ("<bos>", "<s>", "<|begin_of_text|>", "<|endoftext|>") if t in vocab), None)
        self.eos_id = next((vocab[t] for t in ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>") if t in vocab), None)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return _with_specials(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


@dataclass
class SentencePieceTokenizer:
    """A SentencePiece tokenizer.model (fla-hub's Llama-2 tokenizer); needs the sentencepiece package."""

    sp: object
    file_name: str = "tokenizer.model"

    def __post_init__(self) -> None:
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return _with_specials(self.sp.encode(text), self.bos_id, self.eos_id, add_bos, add_eos)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a file, or from a model/artifact directory holding tokenizer.json or tokenizer.model.

    The file must be a regular file of at most `confine.TOKENIZER_MAX_BYTES` (`--tokenizer /dev/zero` read
    until memory ran out; a FIFO blocked forever), and it must have a vocabulary."""
    p = Path(path)
    if not os.path.lexists(p):
        raise CheckpointError(f"tokenizer {p} not found")
    if p.is_dir():
        found = [p / n for n in ("tokenizer.json", "tokenizer.model") if os.path.lexists(p / n)]
        if not found:
            raise CheckpointError(f"{p} has no tokenizer.json or tokenizer.model",
                                  hint="pass token ids or give the model a tokenizer")
        p = found[0]
    regular_file(p, "tokenizer", TOKENIZER_MAX_BYTES)
    tok = _read_tokenizer(p)
    if tok.vocab_size <= 0:
        raise CheckpointError(f"tokenizer {p} has an empty vocabulary")
    return tok


def _read_tokenizer(p: Path) -> Tokenizer:
    if p.suffix == ".json":
        try:
            return HFTokenizer(_HF.from_file(str(p)))
        except Exception as exc:  # tokenizers raises a plain Exception for bad files
            raise CheckpointError(f"{p} is not a valid tokenizer.json ({_first_line(exc)})") from exc
    if p.suffix == ".model":
        try:
            import sentencepiece as spm  # optional (test extra): only tokenizer.model files need it
        except ImportError as exc:
            raise CheckpointError("reading tokenizer.model needs the sentencepiece package",
                                  hint="pip install sentencepiece") from exc
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(p))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{p} is not a valid SentencePiece model ({_first_line(exc)})") from exc
        return SentencePieceTokenizer(sp)
    raise CheckpointError(f"{p}: unknown tokenizer file type (expected tokenizer.json or tokenizer.model)")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def train_bpe(texts: list[str], vocab_size: int, path: Path) -> HFTokenizer:
    """Train a byte-level BPE tokenizer (no unknown tokens) with <pad>/<bos>/<eos> as ids 0/1/2; save it."""
    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))
    return HFTokenizer(tok)
