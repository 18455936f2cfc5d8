"""`retnet-edge` as an lm-evaluation-harness model: any artifact or checkpoint, scored through its Runner.

The only module that imports lm_eval (the `eval` extra). Importing it registers the model name
`retnet-edge` in lm-eval's model registry, so

    python -m retnet_edge.app.lm_eval_model --model retnet-edge --model_args artifact=PATH --tasks …

is lm-eval's own command line with the model available (lm-eval 0.4.13's `lm_eval` script finds models
only in its own source tree: it has no plugin hook to import ours), and `retnet-edge eval --tasks` runs
the same model in-process. Loglikelihood requests are scored by `runtimes.scoring`, every context
prefilled once and its continuations scored from a snapshot of the state after it.

Tokens: the artifact's tokenizer; a context starts with BOS when the manifest's config has a bos_id
(the demo was trained on [bos] document [eos]); an empty context is the BOS (else EOS) alone.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging
from pathlib import Path
from typing import Any, Callable

import lm_eval.models  # noqa: F401  (registers the built-in names: get_model imports them only while the registry is empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.api.task import ConfigurableTask
from lm_eval.defaults import DEFAULT_OTHER_SEED
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..base.io_utils import jsonl_objects
from ..base.tokenizer import Tokenizer
from ..errors import ConfigError
from ..runtimes import Runner
from ..runtimes.generate import SamplingConfig, generate_ids
from ..runtimes.scoring import Request, Score, ScoringStats, check_lengths, context_limit, score_requests
from .cli_utils import runner_and_tokenizer

MODEL_NAME = "retnet-edge"
DEFAULT_GEN_TOKENS = 256  # lm-eval's own default for generate_until tasks that set no max_gen_toks
IGNORED_ARGS = ("batch_size", "max_batch_size", "device")  # lm-eval passes them; a Runner decodes one sequence on CPU
BOOTSTRAP_ITERS = 1000  # stderr of non-mean metrics (perplexity): lm-eval's 100,000 take minutes; acc's is exact

Progress = Callable[[int, int], None]


class RetNetEdgeLM(TemplateLM):
    """loglikelihood (shared contexts), loglikelihood_rolling and generate_until over a Runner."""

    def __init__(self, artifact: str | None = None, tokenizer: str | None = None, threads: int | None = None,
                 max_length: int | None = None, shared: bool = True, *, runner: Runner | None = None,
                 tok: Tokenizer | None = None, progress: Progress | None = None, **kwargs: Any):
        super().__init__()
        unknown = sorted(set(kwargs) - set(IGNORED_ARGS))
        if unknown:
            raise ConfigError(f"unknown model_args for {MODEL_NAME}: {', '.join(unknown)}",
                              hint="artifact=PATH[,tokenizer=FILE,threads=N,max_length=N,shared=false]")
        if runner is None:
            if not artifact:
                raise ConfigError(f"{MODEL_NAME} needs model_args artifact=PATH (an artifact or checkpoint)")
            runner, tok = runner_and_tokenizer(str(artifact), tokenizer, threads)
        assert tok is not None, "a runner comes with its tokenizer"
        self.runner, self.tok, self.progress = runner, tok, progress
        self.shared = str(shared).lower() not in ("false", "0", "no")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
        limits = [n for n in (context_limit(runner.tokenizer_dir), max_length) if n is not None]
        self._max_length = min(limits) if limits else None
        cfg = runner.cfg
        self.add_bos = cfg.bos_id is not None
        self._eot = next((t for t in (cfg.eos_id, tok.eos_id, cfg.bos_id) if t is not None), None)
        self._prefix = next((t for t in (cfg.bos_id, self._eot) if t is not None), None)
        self.stats = ScoringStats(shared=self.shared)

    # --- what lm-eval asks about the model
    @property
    def eot_token_id(self) -> int:
        if self._eot is None:
            raise ConfigError("this model has no eos or bos token: lm-eval needs one to end text")
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        if self._prefix is None:
            raise ConfigError("this model has no bos or eos token to score text from an empty context")
        return self._prefix

    @property
    def max_length(self) -> int | None:
        """The longest item (tokens) the artifact may be fed, or None: a RetNet's state does not grow."""
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"{MODEL_NAME}/{self.tok.file_name}/{self.tok.vocab_size}"

    def get_model_info(self) -> dict:
        return {"artifact": str(self.runner.tokenizer_dir), "vocab_size": self.runner.cfg.vocab_size,
                "max_length": self.max_length, "scoring": self.stats.to_dict()}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        ids = self.tok.encode(string)
        return [self.prefix_token_id, *ids] if add_special_tokens is not False and self.add_bos else ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    # --- requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)  # its tokenizing bar: ours counts requests

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids), as TemplateLM encodes them."""
        reqs = [Request(tuple(ctx), tuple(cont)) for _, ctx, cont in requests if cont]
        check_lengths(reqs, self.max_length)
        scores, stats = score_requests(self.runner, reqs, shared=self.shared, progress=self.progress)
        self.stats.add(stats)
        it = iter(scores)  # an empty continuation (an empty choice) has probability 1, as in lm-eval's HF model
        out = [(s.logprob, s.is_greedy) for s in (next(it) if cont else Score(0.0, True) for _, _, cont in requests)]
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text scored whole from its BOS (the state carries everything before); with a length limit,
        lm-eval's disjoint rolling windows of at most max_length tokens."""
        out = []
        for n, (text,) in enumerate(r.args for r in requests):
            ids = self.tok_encode(text, add_special_tokens=False)
            windows = ([([self.prefix_token_id], ids)] if self.max_length is None else
                       [make_disjoint_window(w) for w in get_rolling_token_windows(
                           ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)])
            reqs = [Request(tuple(c), tuple(k)) for c, k in windows if k]
            scores, stats = score_requests(self.runner, reqs, shared=self.shared) if reqs else ([], ScoringStats())
            self.stats.add(stats)
            out.append(sum(s.logprob for s in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
            if self.progress:
                self.progress(n + 1, len(requests))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for n, (context, gen_kwargs) in enumerate(r.args for r in requests):
            out.append(self._generate(context, dict(gen_kwargs)))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[-1])
            if self.progress:
                self.progress(n + 1, len(requests))
        return out

    def _generate(self, context: str, kw: dict) -> str:
        """Greedy (or sampled, with do_sample) until a stop string, EOS, or max_gen_toks tokens."""
        until = kw.pop("until", None) or [self.tok_decode([self.eot_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kw.pop("max_gen_toks", DEFAULT_GEN_TOKENS))
        sc = SamplingConfig(temperature=float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                            top_k=int(kw.get("top_k") or 0), top_p=float(kw.get("top_p") or 1.0), seed=0)
        prompt = self.tok_encode(context)
        if self.max_length is not None:
            if len(prompt) >= self.max_length:
                raise ConfigError(f"a prompt is {len(prompt)} tokens long, more than this artifact's limit of "
                                  f"{self.max_length}", hint="use a task with shorter prompts, or fewer shots")
            max_new = min(max_new, self.max_length - len(prompt))
        ids: list[int] = []
        text = ""
        for token in generate_ids(self.runner, prompt, max_new, sc, eos_id=self.eot_token_id):
            ids.append(token)
            text = self.tok_decode(ids)
            if any(s and s in text for s in until):
                break
        cut = min((text.index(s) for s in until if s and s in text), default=len(text))
        return text[:cut]


@contextlib.contextmanager
def quiet(stderr: bool = False):
    """lm-eval's and datasets' chatter off while they work for us (restored after): their notices are not
    for our users, and what goes wrong reaches them as our one-line errors. With stderr, their progress
    bars too (lm-eval draws one per task while building requests, with no switch for it)."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "datasets", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()) if stderr else contextlib.nullcontext():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def task_manager(names: list[str], include_paths: list[Path]) -> TaskManager:
    """An index of the local task folders, and of lm-eval's ~15,000 standard tasks (~8 s to build) only
    when a name is not local; an unknown name is an error naming the closest ones."""
    local = [str(p) for p in include_paths]
    with quiet():
        tm = TaskManager(include_defaults=False, include_path=local)
        if not all(n in tm.all_tasks for n in names):
            tm = TaskManager(include_path=local)  # local folders come after the defaults: theirs win
    for name in names:
        if name not in tm.all_tasks:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            raise ConfigError(f"unknown task {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                              hint="`lm-eval ls tasks` lists the standard names; a local task comes with "
                                   "--include-path DIR")
    return tm


def load_tasks(tm: TaskManager, names: list[str], limit: int | None = None) -> dict:
    """lm-eval's task dict for `names` (data loaded), each item that will run checked; one-line errors."""
    merged: dict[str, dict] = {"tasks": {}, "groups": {}, "group_map": {}}
    for name in names:
        check_data_files(name, tm.task_index[name].cfg or {})
        try:
            with quiet(stderr=True):  # and datasets' "Generating test split" bars
                loaded = tm.load([name])
        except ConnectionError as exc:  # datasets: the Hub unreachable, or HF_DATASETS_OFFLINE and not cached
            source = (tm.task_index[name].cfg or {}).get("dataset_path", "its data set")
            raise ConfigError(f"task {name!r} needs {source} from the Hugging Face Hub, which cannot be reached "
                              f"({exc})", hint="run it once online to cache it, or write the items as a YAML + "
                                               "JSONL and pass --include-path DIR") from exc
        except Exception as exc:  # lm-eval and datasets raise many types for a broken task file: one line each
            raise ConfigError(f"task {name!r} could not be loaded ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})") from exc
        for key in merged:
            merged[key].update(loaded.get(key) or {})
    for name, task in merged["tasks"].items():
        if isinstance(task, ConfigurableTask) and task.OUTPUT_TYPE == "multiple_choice":
            check_items(name, task, limit)
    return merged


def template_fields(cfg: dict, columns: set[str] | None = None) -> set[str]:
    """The item fields a task's templates read: a plain name (a field), or the variables of `{{…}}`.

    cfg maps doc_to_text / doc_to_choice / doc_to_target to their YAML values (a function, once
    resolved, or its path before: neither names a field). A plain doc_to_text names a field only if it
    is one of `columns` (else it is a constant prompt)."""
    import jinja2.meta  # lm-eval's template engine

    out = set()
    for attr in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        value = cfg.get(attr)
        if not isinstance(value, str) or "/" in value:
            continue
        if "{{" in value or "{%" in value:
            out |= jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(value))
        elif attr != "doc_to_text" or value in (columns or ()):
            out.add(value)
    return out


def check_data_files(name: str, cfg: dict) -> None:
    """A local JSONL task's lines, before lm-eval reads them (it fails on a missing column with a parse
    error): each an object with the fields the templates read."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") if cfg.get("dataset_path") == "json" else None
    split = cfg.get("test_split") or cfg.get("validation_split")
    paths = files.get(split) if isinstance(files, dict) else files
    fields = template_fields(cfg)
    for path in map(Path, [paths] if isinstance(paths, str) else paths or []):
        if path.suffix != ".jsonl" or any(c in str(path) for c in "*?["):
            continue  # a .json array or a glob: lm-eval's reader, then check_items
        if not path.is_file():
            raise ConfigError(f"task {name!r}: data file {path} not found",
                              hint="lm-eval reads a relative data_files path from the current directory")
        for n, item in jsonl_objects(path.read_text(encoding="utf-8"), f"task {name!r}: {path.name}", ConfigError):
            missing = sorted(f for f in fields if not isinstance(item, dict) or item.get(f) is None)
            if missing:
                raise ConfigError(f"task {name!r}: {path.name} line {n} has no {missing[0]!r} field")


def check_items(name: str, task: ConfigurableTask, limit: int | None) -> None:
    """Every item that will run has the fields the templates read and a label within its choices."""
    docs = task.eval_docs
    fields = template_fields({a: getattr(task.config, a) for a in ("doc_to_text", "doc_to_choice", "doc_to_target")},
                             set(task.features))
    for i in range(len(docs) if limit is None else min(limit, len(docs))):
        doc = docs[i]
        missing = sorted(f for f in fields if doc.get(f) is None)
        if missing:
            raise ConfigError(f"task {name!r}: item {i + 1} has no {missing[0]!r} field")
        choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"task {name!r}: item {i + 1} has no choices")
        if isinstance(target, int) and not 0 <= target < len(choices):
            raise ConfigError(f"task {name!r}: item {i + 1}'s label {target} is out of range: it has "
                              f"{len(choices)} choices (labels 0..{len(choices) - 1})")
        if isinstance(target, str) and target not in choices:
            raise ConfigError(f"task {name!r}: item {i + 1}'s target {target!r} is not one of its choices")


def evaluate_tasks(lm: RetNetEdgeLM, task_dict: dict, limit: int | None, num_fewshot: int | None) -> dict:
    """lm-eval's results dict: what `simple_evaluate` does with a ready model and tasks, minus its
    environment report (which imports torch and runs `pip list`) and global seeds."""
    from lm_eval.evaluator import evaluate

    for task in task_dict["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:  # a task fixed at 0 stays 0
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)  # simple_evaluate's: the same shots through both routes
    with quiet(stderr=True):  # the caller's progress callback reports the scoring, on the stream it holds
        return evaluate(lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)


def register() -> None:
    """Add `retnet-edge` to lm-eval's model registry (once: `python -m` runs this module twice)."""
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME)(RetNetEdgeLM)


register()


def main() -> None:
    """lm-eval's own command line with `retnet-edge` registered (`python -m retnet_edge.app.lm_eval_model`)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
