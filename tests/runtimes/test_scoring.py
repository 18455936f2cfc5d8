"""Shared-context scoring over a Runner (runtimes/scoring.py): against eager PyTorch, against scoring every
continuation from scratch, is_greedy, what it counts, and the reference comparison of `eval --reference`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import retnet_edge
from retnet_edge.base.paths import DEMO_DIR
from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.contract import log_softmax
from retnet_edge.errors import ArtifactError, ConfigError
from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.evaluate import evaluate_text
from retnet_edge.runtimes.scoring import (Request, check_lengths, compare_text, context_limit, score_requests,
                                          token_agreement)

HELDOUT = (DEMO_DIR / "heldout.txt").read_text(encoding="utf-8")


def mc_requests(n_items: int = 3, n_choices: int = 4) -> list[Request]:
    """Multiple-choice-shaped requests from the held-out text: a ~60-token context, ~8-token choices."""
    ids = load_tokenizer(DEMO_DIR).encode(HELDOUT[:20000])
    out = []
    for i in range(n_items):
        ctx = (1, *ids[i * 500 : i * 500 + 60])
        out += [Request(ctx, tuple(ids[i * 500 + 60 + 40 * c : i * 500 + 68 + 40 * c])) for c in range(n_choices)]
    return out


@pytest.fixture
def fp32(demo_export):
    """A runner over the demo's fp32 ONNX artifact (fast, deterministic)."""
    return load_runner(demo_export("onnx", "fp32").path, threads=1)


def eager_logprob(model, r: Request) -> float:
    """Sum of log P(continuation | context) from the parallel form in one forward pass."""
    ids = list(r.context + r.continuation)
    with torch.no_grad():
        lp = log_softmax(model(torch.tensor([ids[:-1]]))[0].numpy())
    rows = np.arange(len(r.context) - 1, len(ids) - 1)
    return float(lp[rows, list(r.continuation)].sum())


def test_fp32_artifact_scores_equal_eager_summed_logprobs(fp32):
    """The issue's bar: loglikelihood of an fp32 artifact = eager summed log-probabilities within 1e-4 rel."""
    model = retnet_edge.load("demo")
    reqs = mc_requests(2)
    scores, _ = score_requests(fp32, reqs)
    for r, s in zip(reqs, scores):
        ref = eager_logprob(model, r)
        assert abs(s.logprob - ref) <= 1e-4 * abs(ref), (s.logprob, ref)


def test_shared_equals_from_scratch_on_fp32_and_counts_tokens(fp32):
    runner = fp32
    reqs = mc_requests(3) + [Request((1, 5, 6), (7,))]  # and a one-token continuation (no prefill after the context)
    shared, s = score_requests(runner, reqs)
    scratch, n = score_requests(runner, reqs, shared=False)
    np.testing.assert_allclose([x.logprob for x in shared], [x.logprob for x in scratch], rtol=1e-5, atol=1e-5)
    assert [x.is_greedy for x in shared] == [x.is_greedy for x in scratch]
    ctx, cont = 61, 8  # three contexts of 61 tokens, four continuations of 8 each; then 3 + 1
    assert (s.requests, s.contexts, s.shared) == (13, 4, True)
    assert s.tokens == 3 * (ctx + 4 * (cont - 1)) + 3 and s.naive_tokens == 12 * (ctx + cont - 1) + 3
    assert (n.tokens, n.naive_tokens, n.shared) == (s.naive_tokens, s.naive_tokens, False)
    assert s.to_dict()["token_ratio"] == pytest.approx(s.naive_tokens / s.tokens)


def test_shared_picks_the_same_choices_as_from_scratch_on_int4(demo_export):
    runner = load_runner(demo_export("onnx", "int4").path, threads=1)
    reqs = mc_requests(6)
    shared, _ = score_requests(runner, reqs)
    scratch, _ = score_requests(runner, reqs, shared=False)
    pick = lambda scores: [int(np.argmax([x.logprob for x in scores[i : i + 4]])) for i in range(0, len(scores), 4)]
    assert pick(shared) == pick(scratch)
    np.testing.assert_allclose([x.logprob for x in shared], [x.logprob for x in scratch], rtol=1e-4)


def test_is_greedy_on_a_constructed_continuation(fp32):
    """The argmax continuation (decoded step by step) is greedy; with its last token replaced by the
    runner-up it is not, and scores lower."""
    runner = fp32
    ctx = (1, *load_tokenizer(DEMO_DIR).encode("And the LORD said unto Moses,"))
    runner.reset()
    logits, greedy = runner.prefill(list(ctx), all_logits=False)[-1], []
    for _ in range(5):
        runner_up = int(np.argsort(logits)[-2])
        greedy.append(int(np.argmax(logits)))
        logits = runner.step(greedy[-1])
    wrong = greedy[:-1] + [runner_up]
    scores, _ = score_requests(runner, [Request(ctx, tuple(greedy)), Request(ctx, tuple(wrong))])
    assert scores[0].is_greedy and not scores[1].is_greedy
    assert scores[0].logprob > scores[1].logprob


def test_program_with_state_inside_is_scored_from_scratch(fp32):
    """A session that keeps its state in the program (ExecuTorch runner flavour) cannot be snapshotted:
    the same scores, from scratch, and the stats say why."""
    runner = fp32
    reqs = mc_requests(1)
    shared, _ = score_requests(runner, reqs)
    runner.session.state_in_program = True
    scratch, stats = score_requests(runner, reqs)
    assert not stats.shared and "ExecuTorch runner flavour" in stats.notes[0]
    assert stats.tokens == stats.naive_tokens
    np.testing.assert_allclose([x.logprob for x in scratch], [x.logprob for x in shared], rtol=1e-6)


def test_long_continuations_are_scored_in_chunks(fp32, monkeypatch):
    """A rolling window's long continuation is prefilled in CHUNK-token pieces: the same sum."""
    import retnet_edge.runtimes.scoring as scoring

    runner = fp32
    ids = load_tokenizer(DEMO_DIR).encode(HELDOUT[:2000])[:100]
    whole, _ = score_requests(runner, [Request((1,), tuple(ids))])
    monkeypatch.setattr(scoring, "CHUNK", 7)
    chunked, _ = score_requests(runner, [Request((1,), tuple(ids))])
    assert chunked[0].logprob == pytest.approx(whole[0].logprob, rel=1e-6)
    assert chunked[0].is_greedy == whole[0].is_greedy


def test_requests_longer_than_the_limit_are_refused_before_scoring():
    reqs = [Request((1, 2, 3), (4, 5)), Request((1,) * 10, (2, 3))]
    check_lengths(reqs, 12)
    check_lengths(reqs, None)
    with pytest.raises(ConfigError, match="an item is 12 tokens long .* more than this artifact's limit of 11"):
        check_lengths(reqs, 11)
    with pytest.raises(ConfigError, match="non-empty context and continuation"):
        Request((1,), ())


def test_context_limit_reads_what_the_artifact_declares(tmp_path):
    (tmp_path / "pte").mkdir()
    (tmp_path / "pte" / "delegation.json").write_text(json.dumps({"constant_methods": {"get_max_context_len": 300}}))
    (tmp_path / "genai").mkdir()
    (tmp_path / "genai" / "genai_config.json").write_text(json.dumps({"model": {"context_length": 4096}}))
    assert context_limit(tmp_path / "pte") == 300 and context_limit(tmp_path / "genai") == 4096
    assert context_limit(tmp_path) is None and context_limit(None) is None


def test_compare_text_against_itself_and_against_fp32(fp32, demo_export):
    """vs itself: KL 0, top-1 1, Δppl 0; int8 vs fp32: small positive KL, perplexities equal to what `eval`
    reports for each alone (the same windows)."""
    tok = load_tokenizer(DEMO_DIR)
    same = compare_text(fp32, fp32, tok, HELDOUT, window=128, max_tokens=300)
    assert same["tokens"] == 300 and same["kl_mean"] == pytest.approx(0, abs=1e-12) and same["top1"] == 1.0
    assert same["delta_ppl"] == 0.0
    int8 = load_runner(demo_export("onnx", "int8").path, threads=1)
    r = compare_text(int8, fp32, tok, HELDOUT, window=128, max_tokens=300)
    assert 0 < r["kl_mean"] < 0.05 and r["kl_p99"] >= r["kl_mean"] and 0.9 < r["top1"] < 1.0
    alone = evaluate_text(int8, tok, HELDOUT, window=128, max_tokens=300)["perplexity"]
    ref = evaluate_text(fp32, tok, HELDOUT, window=128, max_tokens=300)["perplexity"]
    assert r["perplexity"] == pytest.approx(alone, rel=1e-12) and r["reference_perplexity"] == pytest.approx(ref, rel=1e-12)
    assert r["delta_ppl"] == pytest.approx(alone - ref, rel=1e-9)


def test_compare_text_refuses_another_vocabulary(tiny_onnx, demo_export):
    _, art = tiny_onnx  # vocab 101
    with pytest.raises(ConfigError, match=r"the reference's vocabulary \(101 tokens\) differs from the model's \(4096\)"):
        compare_text(load_runner(demo_export("onnx", "fp32").path), load_runner(art.path), load_tokenizer(DEMO_DIR), "x")


def test_token_agreement_is_kl_and_top1():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    got = np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4]]))
    kl, top1 = token_agreement(ref, got)
    expected = [(0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3)), 0.1 * np.log(0.1 / 0.5) + 0.8 * np.log(0.8 / 0.4)]
    np.testing.assert_allclose(kl, expected, rtol=1e-12)
    assert top1.tolist() == [True, False]


def test_non_finite_logits_are_an_error(fp32, demo_export, monkeypatch):
    monkeypatch.setattr(fp32, "prefill", lambda ids, all_logits=True: np.full((len(ids), 4096), np.nan, np.float32))
    with pytest.raises(ArtifactError, match="non-finite logits"):
        compare_text(fp32, load_runner(demo_export("onnx", "fp32").path), load_tokenizer(DEMO_DIR), HELDOUT[:500])
