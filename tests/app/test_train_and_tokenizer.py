"""Tokenizer interface, sampling, and the trainer (tiny, CPU): loss falls, resume continues."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import retnet_edge
from retnet_edge.base.tokenizer import load_tokenizer, train_bpe
from retnet_edge.cli import main
from retnet_edge.runtimes.generate import SamplingConfig, sample

TEXT = "\n\n".join(
    f"And the {w} said unto the {v}, Go thou and {x} the land, for it is good and {y}." for w, v, x, y in
    [(a, b, c, d) for a in ("king", "man", "woman", "prophet") for b in ("people", "servant", "priest")
     for c in ("see", "keep", "build") for d in ("fair", "wide")])


def test_bpe_round_trip_and_specials(tmp_path):
    tok = train_bpe(TEXT.split("\n\n"), 300, tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("And the king said — ünïcode", add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "And the king said — ünïcode"
    assert load_tokenizer(tmp_path).vocab_size == tok.vocab_size


def test_bad_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    import pytest

    with pytest.raises(retnet_edge.CheckpointError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_sampling_filters():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    assert sample(logits, SamplingConfig(temperature=0), rng) == 1
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_k=2), rng) for _ in range(200)}
    assert draws == {1, 2}
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_p=0.4), rng) for _ in range(100)}
    assert draws == {1}


def test_train_cli_learns_and_resumes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "model"
    args = ["train", str(corpus), "-o", str(out), "--preset", "tiny", "--vocab-size", "300", "--batch-size", "8",
            "--seq-len", "64", "--eval-every", "10", "--device", "cpu", "--warmup", "5", "--dropout", "0", "--json"]
    res = CliRunner().invoke(main, args + ["--steps", "40"])
    assert res.exit_code == 0, res.output
    log = json.loads((out / "train_log.json").read_text())
    assert log["history"][-1]["val_loss"] < log["history"][0]["val_loss"] - 0.5
    assert {"README.md", "tokenizer.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    model = retnet_edge.load(out)
    assert model.cfg.bos_id == 1 and model.cfg.vocab_size == 300
    res = CliRunner().invoke(main, args + ["--steps", "50", "--force"])
    assert res.exit_code == 0 and "resumed at step 40" in res.stderr
    assert json.loads((out / "train_log.json").read_text())["history"][-1]["step"] == 50


def test_sentencepiece_model(tmp_path):
    """tokenizer.model (fla-hub's Llama-2 format) through the same interface."""
    import pytest

    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "corpus.txt").write_text(TEXT.replace("\n\n", "\n"))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=120, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2, hard_vocab_limit=False)
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    assert tok.file_name == "tokenizer.model" and (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("And the king said unto the people", add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "And the king said unto the people"
    _check_streaming(tok, "And the king said unto the people, and the people said unto the king " * 30)


class _Counting:
    """A tokenizer wrapper counting the ids it is asked to decode."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids):
        self.decoded += len(ids)
        return self.tok.decode(ids)


def _check_streaming(tok, text: str) -> None:
    from retnet_edge.runtimes.generate import stream_text

    ids = tok.encode(text)
    pieces: list[str] = []
    counting = _Counting(tok)
    assert stream_text(counting, iter(ids), pieces.append) == ids
    assert "".join(pieces) == tok.decode(ids)  # the same text as decoding it at once, spaces included
    assert counting.decoded < 40 * len(ids)  # constant work per token, not the whole output each time


def test_streaming_detokenization_is_incremental():
    """`generate` streams with a window of recent ids (issue 14: it re-decoded the whole output per token)."""
    from retnet_edge.base.paths import DEMO_DIR

    tok = load_tokenizer(DEMO_DIR / "tokenizer.json")
    _check_streaming(tok, (DEMO_DIR / "heldout.txt").read_text()[:6000] + " héllo wörld — ünïcode ✓ 日本語")
