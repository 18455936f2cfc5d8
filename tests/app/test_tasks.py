"""Task accuracy (issue 33): demo-mc, the lm-eval model through both routes, and every bad input.

Everything runs offline: the tasks are local files (a YAML + JSONL made here, or the shipped demo-mc) and
HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set, in this process and in the subprocesses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import retnet_edge
from retnet_edge.app.tasks import (DEMO_MC_FILE, MC_CHOICES, MC_LENGTH_BAND, build_demo_mc, chapters, demo_mc_jsonl,
                                   format_table, run_tasks, task_accuracy)
from retnet_edge.base.paths import DEMO_DIR
from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.cli import main
from retnet_edge.contract import log_softmax
from retnet_edge.runtimes import load_runner

HELDOUT = (DEMO_DIR / "heldout.txt").read_text(encoding="utf-8")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # "nothing written": the tests look at this folder afterwards


@pytest.fixture
def fp32(demo_export):
    return demo_export("onnx", "fp32").path


def verse_items(n: int = 6) -> list[dict]:
    """Items of a three-choice task: a verse, then the next verse among two from far away."""
    verses = [v for ch in chapters(HELDOUT) for v in ch]
    return [{"question": verses[10 * i], "options": [verses[10 * i + 1], verses[500 + i], verses[900 + i]],
             "answer": 0} for i in range(n)]


def write_task(folder: Path, items: list[dict], name: str = "verse-mc") -> Path:
    """A local task: YAML + JSONL (data_files absolute, as lm-eval resolves them from the working directory)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: options
doc_to_target: answer
target_delimiter: "\\n"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return folder


# --- demo-mc

def test_demo_mc_is_the_deterministic_build_of_the_heldout_text():
    items = build_demo_mc(HELDOUT)
    assert DEMO_MC_FILE.read_text(encoding="utf-8") == demo_mc_jsonl(items)  # scripts/make_demo_mc.py rewrites it
    assert len(items) == 300 and len({i["id"] for i in items}) == 300
    assert [sum(i["label"] == k for i in items) for k in range(MC_CHOICES)] == [75] * 4
    chaps = chapters(HELDOUT)
    for item in items:
        c, v = map(int, item["id"].split(":"))
        answer = item["choices"][item["label"]]
        assert item["context"].split("\n") == chaps[c][v - 4 : v] and answer == chaps[c][v]
        assert len(set(item["choices"])) == MC_CHOICES
        assert all(MC_LENGTH_BAND[0] <= len(x) / len(answer) <= MC_LENGTH_BAND[1] for x in item["choices"])
        assert not any(x in chaps[c] for x in item["choices"] if x != answer)  # distractors: other chapters


def test_task_accuracy_on_demo_mc_and_shared_scoring(fp32):
    runner, tok = load_runner(fp32), load_tokenizer(fp32)
    acc = task_accuracy(runner, tok, limit=8)
    assert acc["task"] == "demo-mc" and acc["items"] == 8 and 0 <= acc["acc"] <= 1 and 0 <= acc["acc_norm"] <= 1
    assert acc["acc_stderr"] == pytest.approx(np.sqrt(acc["acc"] * (1 - acc["acc"]) / 7))
    r = run_tasks(runner, tok, ["demo-mc"], limit=8, shared=False)
    assert r["tasks"]["demo-mc"]["acc"] == acc["acc"] and r["tasks"]["demo-mc"]["acc_norm"] == acc["acc_norm"]
    shared = run_tasks(runner, tok, ["demo-mc"], limit=8)["scoring"]
    assert (shared["requests"], shared["contexts"], r["scoring"]["tokens"]) == (32, 8, shared["naive_tokens"])
    assert shared["token_ratio"] > 2  # ~130-token contexts, ~32-token choices
    text = format_table({**r, "scoring": shared})
    assert "demo-mc" in text and "acc_norm" in text and "from scratch" in text


def test_num_fewshot_prepends_solved_items(fp32):
    runner, tok = load_runner(fp32), load_tokenizer(fp32)
    zero = run_tasks(runner, tok, ["demo-mc"], limit=2)
    two = run_tasks(runner, tok, ["demo-mc"], limit=2, num_fewshot=2)
    assert two["tasks"]["demo-mc"]["num_fewshot"] == 2 and zero["tasks"]["demo-mc"]["num_fewshot"] == 0
    assert two["scoring"]["tokens"] > 2 * zero["scoring"]["tokens"]  # each context holds two more items


# --- the lm-eval model

def test_loglikelihood_of_the_fp32_artifact_equals_eager_summed_logprobs(fp32):
    """Through lm-eval's request objects and the artifact's tokenizer (BOS first, as the manifest says)."""
    from lm_eval.api.instance import Instance

    from retnet_edge.app.lm_eval_model import RetNetEdgeLM

    lm = RetNetEdgeLM(artifact=str(fp32), threads=1)
    pairs = [("And God said, Let there be light:", " and there was light."),
             ("And God said, Let there be light:", " and the earth was dark."), ("", "In the beginning")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    model, tok = retnet_edge.load("demo"), load_tokenizer(DEMO_DIR)
    for (ctx, cont), (lp, _) in zip(pairs, got):
        ids = tok.encode(ctx + cont)
        n = len(ids) - len(tok.encode(ctx)) if ctx else len(ids)
        ids = [1] + ids  # the demo's bos: an empty context is the BOS alone
        with torch.no_grad():
            rows = log_softmax(model(torch.tensor([ids[:-1]]))[0].numpy())
        ref = float(rows[np.arange(len(ids) - 1 - n, len(ids) - 1), ids[-n:]].sum())
        assert abs(lp - ref) <= 1e-4 * abs(ref), (ctx, cont, lp, ref)
    assert lm.stats.contexts == 2 and lm.stats.requests == 3
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("And God said", ""), 0)]) == [(0.0, True)]  # as HF's


def test_generate_until_stops_at_a_stop_string_and_max_tokens(fp32):
    from lm_eval.api.instance import Instance

    from retnet_edge.app.lm_eval_model import RetNetEdgeLM

    lm = RetNetEdgeLM(artifact=str(fp32), threads=1)
    ask = lambda kw: lm.generate_until([Instance("generate_until", {}, ("And the LORD said unto Moses,", kw), 0)])[0]
    free = ask({"until": ["never-in-the-text"], "max_gen_toks": 24})
    short = ask({"until": ["never-in-the-text"], "max_gen_toks": 6})
    assert free.startswith(short) and len(short) < len(free)
    stop = free.split()[3]
    assert ask({"until": [stop], "max_gen_toks": 24}) == free[: free.index(stop)]
    assert ask({"until": "never", "max_gen_toks": 0}) == ""


def test_loglikelihood_rolling_scores_every_token_from_the_bos(fp32):
    from lm_eval.api.instance import Instance

    from retnet_edge.app.lm_eval_model import RetNetEdgeLM
    from retnet_edge.runtimes.evaluate import evaluate_text

    lm, text = RetNetEdgeLM(artifact=str(fp32), threads=1), HELDOUT[:600]
    total = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    r = evaluate_text(load_runner(fp32), load_tokenizer(fp32), text, window=4096)
    assert total == pytest.approx(-r["nll_per_token"] * r["tokens"], rel=1e-6)
    windowed = RetNetEdgeLM(artifact=str(fp32), threads=1, max_length=32)
    assert windowed.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0] < 0
    assert windowed.stats.requests == -(-r["tokens"] // 32)  # disjoint windows of at most 32 tokens


def test_a_local_task_through_both_routes_offline(fp32, tmp_path):
    """`retnet-edge eval --tasks` and lm-eval's own command line with the model registered give the same
    accuracy on a task made here (YAML + JSONL), with no network."""
    tasks = write_task(tmp_path / "tasks", verse_items(6))
    res = CliRunner().invoke(main, ["eval", str(fp32), "--tasks", "verse-mc", "--include-path", str(tasks), "--json"])
    assert res.exit_code == 0, res.output
    ours = json.loads(res.stdout)["tasks"]["verse-mc"]
    # the true next verse beats verses from far away once length is normalized (unnormalized, the two
    # shorter distractors win: summed log-probabilities favour short choices)
    assert ours["items"] == 6 and ours["acc_norm"] >= 0.5
    out = tmp_path / "lm-eval-out"
    run = subprocess.run([sys.executable, "-m", "retnet_edge.app.lm_eval_model", "--model", "retnet-edge",
                          "--model_args", f"artifact={fp32},threads=1", "--tasks", "verse-mc", "--include_path",
                          str(tasks), "--output_path", str(out)], capture_output=True, text=True,
                         env={**os.environ, **OFFLINE}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(next(out.rglob("results_*.json")).read_text())
    assert theirs["results"]["verse-mc"]["acc,none"] == ours["acc"]
    assert theirs["results"]["verse-mc"]["acc_norm,none"] == ours["acc_norm"]
    assert theirs["config"]["scoring"]["contexts"] == 6 and theirs["config"]["scoring"]["requests"] == 18


def test_onnx_task_scoring_imports_no_torch(fp32):
    code = ("import sys\nfrom retnet_edge.cli import main\nsys.argv = ['retnet-edge', 'eval', %r, '--tasks', "
            "'demo-mc', '--limit', '2', '--json']\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('TORCH', 'torch' in sys.modules, code, file=sys.stderr)" % str(fp32))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **OFFLINE})
    assert "TORCH False 0" in run.stderr, run.stderr[-2000:]
    assert json.loads(run.stdout)["tasks"]["demo-mc"]["items"] == 2


# --- bad input: one line, exit 1 (2 for usage), nothing written

def _fails(args: list[str], message: str, code: int = 1) -> None:
    before = sorted(Path.cwd().rglob("*"))
    res = CliRunner().invoke(main, args)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == code and len(errors) == 1 and message in errors[0], (res.exit_code, res.output)
    assert "Traceback" not in res.output and res.stdout == ""
    assert sorted(Path.cwd().rglob("*")) == before


def test_unknown_task_names_the_closest(fp32):
    _fails(["eval", str(fp32), "--tasks", "demo-mcq"], "unknown task 'demo-mcq' (did you mean demo-mc?)")


def test_bad_include_paths(fp32, tmp_path):
    _fails(["eval", str(fp32), "--tasks", "x", "--include-path", str(tmp_path / "nope")], "nope not found")
    (tmp_path / "f").write_text("x")
    _fails(["eval", str(fp32), "--tasks", "x", "--include-path", str(tmp_path / "f")], "is not a directory")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.yaml").write_text("just: notes\n")
    _fails(["eval", str(fp32), "--tasks", "x", "--include-path", str(tmp_path / "empty")], "holds no task file")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "t.yaml").write_text("task: t\n  oops: [\n")
    _fails(["eval", str(fp32), "--tasks", "t", "--include-path", str(tmp_path / "broken")], "t.yaml is not valid YAML")


@pytest.mark.parametrize("edit, message", [
    (lambda items: items[1].pop("answer"), "'verse-mc': verse-mc.jsonl line 2 has no 'answer' field"),
    (lambda items: [i.pop("options") for i in items], "verse-mc.jsonl line 1 has no 'options' field"),
    (lambda items: items[2].pop("question"), "verse-mc.jsonl line 3 has no 'question' field"),
    (lambda items: items[2].update(answer=5), "item 3's label 5 is out of range: it has 3 choices (labels 0..2)"),
    (lambda items: items[0].update(answer=-1), "item 1's label -1 is out of range"),
    (lambda items: items[3].update(options=[]), "item 4 has no choices"),
])
def test_broken_items(fp32, tmp_path, edit, message):
    items = verse_items(4)
    edit(items)
    tasks = write_task(tmp_path / "tasks", items)
    _fails(["eval", str(fp32), "--tasks", "verse-mc", "--include-path", str(tasks)], message)


def test_broken_data_files(fp32, tmp_path):
    tasks = write_task(tmp_path / "tasks", verse_items(3))
    data = tasks / "verse-mc.jsonl"
    data.write_text(data.read_text() + "{not json\n")
    _fails(["eval", str(fp32), "--tasks", "verse-mc", "--include-path", str(tasks)], "verse-mc.jsonl line 4 is not JSON")
    data.unlink()
    _fails(["eval", str(fp32), "--tasks", "verse-mc", "--include-path", str(tasks)], "verse-mc.jsonl not found")


def test_item_longer_than_the_limit(fp32, tmp_path):
    tasks = write_task(tmp_path / "tasks", verse_items(2))
    _fails(["eval", str(fp32), "--tasks", "verse-mc", "--include-path", str(tasks), "--max-length", "16"],
           "more than this artifact's limit of 16")


@pytest.mark.parametrize("args, message, code", [
    (["--tasks", "demo-mc", "--limit", "0"], "--limit must be >= 1 item per task, got 0", 1),
    (["--tasks", "demo-mc", "--limit", "-3"], "--limit must be >= 1 item per task, got -3", 1),
    (["--tasks", "demo-mc", "--num-fewshot", "-1"], "--num-fewshot must be >= 0", 1),
    (["--tasks", " , "], "--tasks needs at least one task name", 1),
    (["--tasks", "demo-mc", "--window", "64"], "--window does not apply with --tasks", 2),
    (["--tasks", "demo-mc", "--reference", "demo"], "--reference does not apply with --tasks", 2),
    (["--limit", "5"], "--limit does not apply without --tasks", 2),
])
def test_bad_options(fp32, args, message, code):
    _fails(["eval", str(fp32), *args], message, code)


def test_reference_with_another_vocabulary(fp32, tiny_onnx):
    _, art = tiny_onnx  # vocab 101
    _fails(["eval", str(fp32), "--reference", str(art.path), "--max-tokens", "64"],
           "the reference's vocabulary (101 tokens) differs from the model's (4096)")


def test_a_task_that_needs_the_network_offline(fp32):
    """lm-eval's hellaswag is fetched from the Hub the first time: offline, one line that says so and how
    to use a local copy (a subprocess: datasets reads HF_DATASETS_OFFLINE when first imported)."""
    run = subprocess.run([sys.executable, "-m", "retnet_edge", "eval", str(fp32), "--tasks", "hellaswag", "--limit", "2"],
                         capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=600)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and run.stdout == "", run.stderr[-2000:]
    assert lines[0].startswith("Error: task 'hellaswag' needs Rowan/hellaswag from the Hugging Face Hub, which "
                               "cannot be reached") and "--include-path DIR" in lines[0]


def test_without_the_eval_extra_the_command_says_which(fp32):
    block = ("import sys, importlib.abc\nclass Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path, target=None):\n        if name.split('.')[0] == 'lm_eval':\n"
             "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
             "sys.meta_path.insert(0, Block())\nfrom retnet_edge.cli import main\n"
             "sys.argv = ['retnet-edge', 'eval', %r, '--tasks', 'demo-mc']\nmain()\n" % str(fp32))
    run = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == (
        "Error: this needs lm_eval, which the base install leaves out (hint: pip install 'retnet-edge[eval]')")
