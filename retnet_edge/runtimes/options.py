"""`RuntimeOptions`: how a runtime runs an artifact, checked once where it is built.

Everything that changes a runtime's behaviour is a field here (and a CLI option), not an environment
variable: threads, which ONNX step graph decodes, whether onnxruntime's workers spin between ops. The
flavour comes from the artifact's manifest, never from files that happen to lie beside it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

MAX_THREADS = 256
# auto: model_fused.onnx (LinearAttention, the state updated in place) where the artifact and onnxruntime
# have it, else model.onnx; fused / chain force one (runtimes/onnxruntime.py says why auto picks fused)
STEP_GRAPH_CHOICES = ("auto", "fused", "chain")
# auto: an int4 artifact's prompt graph runs int8 weights derived from its codes when it opens (runtimes/onnx_int8.py
# says why); stored: the graph as exported (what plain onnxruntime runs)
PROMPT_WEIGHT_CHOICES = ("auto", "stored")


def check_prompt_weights(choice: str) -> None:
    if choice not in PROMPT_WEIGHT_CHOICES:
        raise ConfigError(f"--prompt-weights {choice!r}: expected one of {', '.join(PROMPT_WEIGHT_CHOICES)}")


def check_threads(threads: int | None) -> None:
    """None (the runtime's default) or 1..MAX_THREADS: -1 aborted the ExecuTorch runtime and 100000 grew
    onnxruntime past 2.5 GB before crashing (issue 14)."""
    if threads is not None and not (type(threads) is int and 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"--threads must be between 1 and {MAX_THREADS}, got {threads!r}")


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int | None = None  # None: the runtime's default (all cores)
    step_graph: str = "auto"  # ONNX: STEP_GRAPH_CHOICES
    # ONNX: worker threads spin between ops (onnxruntime's default): at 2 threads a `small` int4 token took
    # 16.0 ms spinning vs 22.8 ms without (benchmarks/results/runtime_ab.json); off where idle cores matter
    # more than latency (shared machines, battery)
    spin: bool = True
    flavor: str | None = None  # the artifact's flavour (its manifest's); None: the target's default
    prompt_weights: str = "auto"  # ONNX: PROMPT_WEIGHT_CHOICES

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if self.step_graph not in STEP_GRAPH_CHOICES:
            raise ConfigError(f"--step-graph {self.step_graph!r}: expected one of {', '.join(STEP_GRAPH_CHOICES)}")
        check_prompt_weights(self.prompt_weights)
