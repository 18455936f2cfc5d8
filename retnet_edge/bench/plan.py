"""What a `bench` run will do, checked before anything is built or measured (issue 29): one subject per
artifact, `--runtime cpp` only where it applies, contexts the baseline can hold, and an estimate of the
time, said up front — 10^6 contexts with the default baseline used to be accepted and never finish.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..base.io_utils import owner_alive, owner_tag
from ..errors import ConfigError

if TYPE_CHECKING:
    from .suite import BenchConfig, Subject

# The Transformer-KV baseline's cache holds at most this many positions: its ONNX graph's rotary caches have
# 65,536 rows (kv_onnx.MAX_POSITIONS; the run preallocates what it reaches), and its ExecuTorch program
# preallocates the cache for the whole run.
BASELINE_MAX_CONTEXT = 65_536
# Rough rates for the estimate, from the demo model (17M parameters) on one core of a Xeon: prefill ~5e10
# (eager) to ~1.6e11 (ONNX int8) FLOP/s, a decode step 1 ms (ONNX) to 11 ms (eager) — the slower of each.
FLOPS_PER_S = 5e10
STEP_FLOOR_S = 1e-2
PROCESS_S = 5.0  # a fresh measuring process: imports, load, two 512-token prompts
BUILD_S = 60.0  # building one baseline artifact
MAX_ESTIMATE_S = 24 * 3600  # past this a run is refused up front: split it
WORK_PREFIX = "retnet-edge-bench-"


def unique_subjects(subjects: list[Subject], log: Callable[[str], None]) -> list[Subject]:
    """One subject per artifact: `bench A A` (or A and ./A) measures A once, and says so."""
    seen: dict[Path, Subject] = {}
    for s in subjects:
        key = Path(os.path.realpath(s.path))
        if key in seen:
            log(f"{s.label} names the same model as {seen[key].label}: measuring it once")
            continue
        seen[key] = s
    return list(seen.values())


def check_runtime(subjects: list[Subject], runtime: str) -> None:
    """`--runtime cpp` / `python` choose how ExecuTorch programs run; forcing cpp on anything else is refused."""
    if runtime != "cpp":
        return
    other = next((s for s in subjects if not s.runtime.startswith("executorch")), None)
    if other is not None:
        kind = "a checkpoint (run by eager PyTorch)" if other.runtime == "torch" else "an ONNX artifact"
        raise ConfigError(f"--runtime cpp runs ExecuTorch programs only; {other.label} is {kind}",
                          hint="drop --runtime, or bench ExecuTorch artifacts alone with it")


def _positions(subject: Subject, bc: BenchConfig) -> int:
    """The deepest position the subject's baseline reaches (its ExecuTorch cache is not rewound per repeat)."""
    deepest = max(bc.contexts)
    return deepest + 1 + bc.tokens if subject.runtime in ("onnxruntime", "torch") else \
        deepest + bc.tokens * bc.repeat + 8


def process_seconds(subject: Subject, bc: BenchConfig, model: str) -> float:
    """Estimated wall time of one measuring process: the prompt (twice), a fill from empty to each context,
    then the timed steps."""
    cfg = subject.cfg
    weights = cfg.parameter_count() - cfg.vocab_size * cfg.d_model  # the embedding is a lookup
    steps = 1 + bc.repeat * bc.tokens
    flops = 2 * weights * (sum(bc.contexts) + 1024)
    step = [max(STEP_FLOOR_S, 2 * weights / FLOPS_PER_S)] * len(bc.contexts)
    if model == "transformer":  # attention over the cache (width ~ d_model): C^2 to fill, C per step
        flops += 2 * cfg.n_layers * cfg.d_model * sum(c**2 for c in bc.contexts)
        step = [t + 4 * cfg.n_layers * cfg.d_model * c / FLOPS_PER_S for t, c in zip(step, sorted(bc.contexts))]
    return PROCESS_S + flops / FLOPS_PER_S + steps * sum(step)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:,.1f} h"


def check_plan(subjects: list[Subject], bc: BenchConfig, baselines: int, n_llama: int = 0) -> str:
    """Refuse, before any work, contexts the baseline cannot hold or a run past a day; else the estimate.
    `baselines`: Transformer-KV artifacts to build; `n_llama`: llama.cpp GGUFs to build and measure."""
    total = BUILD_S * baselines + len(bc.threads) * sum(process_seconds(s, bc, s.model) for s in subjects)
    retnets = [s for s in subjects if s.model == "retnet"]
    total += BUILD_S * n_llama + len(bc.threads) * n_llama * max(
        (process_seconds(s, bc, "transformer") for s in retnets), default=0.0)
    if "transformer" in bc.baselines:
        total += len(bc.threads) * sum(process_seconds(s, bc, "transformer") for s in retnets)
        need = max((_positions(s, bc) for s in retnets), default=0)
        if need > BASELINE_MAX_CONTEXT:
            cfg = retnets[0].cfg
            kv_gb = 2 * cfg.n_layers * need * cfg.d_model * 4 / 1e9
            raise ConfigError(f"--contexts up to {max(bc.contexts):,} needs {need:,} positions of the "
                              f"Transformer-KV baseline's cache ({kv_gb:,.1f} GB; it holds "
                              f"{BASELINE_MAX_CONTEXT:,}); this run would take about {duration(total)}",
                              hint="lower --contexts, or pass --baseline none to measure deeper RetNet contexts")
    if total > MAX_ESTIMATE_S:
        raise ConfigError(f"this bench would take about {duration(total)} (deepest context {max(bc.contexts):,}, "
                          f"{bc.repeat} x {bc.tokens} timed tokens per context); at most {duration(MAX_ESTIMATE_S)}",
                          hint="lower --contexts, --tokens or --repeat, or split the run")
    jobs = len(bc.threads) * (len(subjects) + (len(retnets) if "transformer" in bc.baselines else 0) + n_llama)
    return f"{jobs} measuring process(es), deepest context {max(bc.contexts):,}: about {duration(total)} (estimate)"


def work_dir() -> Path:
    """A temp dir for this run's baselines, tagged with its owner: a killed run's is removed by the next."""
    clean_stale_work_dirs()
    return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{owner_tag()}."))


def clean_stale_work_dirs() -> list[Path]:
    """Remove `retnet-edge-bench-PID-START.xxxx` temp dirs whose run is gone (SIGKILL leaves them)."""
    removed = []
    for p in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*.*"):
        tag = p.name[len(WORK_PREFIX):].split(".")[0]
        if tag.replace("-", "").isdigit() and not owner_alive(tag):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
