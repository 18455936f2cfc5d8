"""What to export, as one checked object: `ExportRequest` (one artifact) and `export_requests` (the list a
command asks for: a single artifact is a list of one, a bundle one per target x quant).

Every name and number is checked here, once, before the first export starts (not after an hour of work):
the target, its flavour, the quantization, the prompt weights a target offers, the gate's steps. The CLI
builds the list; `exporters.export_artifact` and `app.bundle.export_bundle` take it as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from . import TARGET_FLAVORS
from .quant import (
    DEFAULT_DATA_FREE_INT4_METHODS,
    DEFAULT_INT4_METHODS,
    QuantConfig,
    QuantScheme,
    check_int4_method,
    check_int4_method_target,
)

DEFAULT_TARGETS = ("onnx", "executorch")
DEFAULT_QUANTS = ("int8", "int4")
# the prompt-weight choices each target can write (QuantConfig.prefill_weights); only a flavour with a
# separate prompt graph (ONNX standard) can hold int8 prompt copies
TARGET_PREFILL_WEIGHTS = {"onnx": ("same", "int8"), "executorch": ("same",)}
PREFILL_GRAPH_FLAVORS = ("standard",)
# the op model_fused.onnx updates the state with (ONNX only): auto = the ai.onnx LinearAttention of opset 27
# where the installed onnxruntime has a kernel for it, else com.microsoft's; standard / contrib force one
STATE_OPS = ("auto", "standard", "contrib")
MIN_STEPS, MAX_STEPS = 4, 100_000  # the gate splits its tokens 3:1 between the prompt and the step paths


def has_heldout_text(model: str) -> bool:
    """Whether the model directory ships held-out text (`heldout.txt`): calibration text for `auto`'s gptq."""
    from ..base.paths import resolve_path
    from ..errors import RetNetEdgeError

    try:
        path = resolve_path(model)
    except (RetNetEdgeError, OSError):
        return False  # the export itself says what is wrong with the model
    return path.is_dir() and (path / "heldout.txt").is_file()


def check_steps(steps: int) -> None:
    """The gate needs a few tokens for each of its two paths, and a bounded run."""
    if not (isinstance(steps, int) and MIN_STEPS <= steps <= MAX_STEPS):
        raise ConfigError(f"--steps must be between {MIN_STEPS} and {MAX_STEPS}, got {steps}")


@dataclass(frozen=True)
class ExportRequest:
    """One artifact: which model, to which target and precision, written where, and how it is gated."""

    model: str  # `demo`, a model directory, a checkpoint or a Hub id
    target: str
    quant: QuantConfig
    output: Path
    flavor: str | None = None  # None: the target's default
    steps: int = 64  # the gate's teacher-forced tokens
    validate: bool = True  # False writes "validation": "skipped" (benchmarks of random weights)
    force: bool = False
    calibration: str | None = None  # text a calibrated int4 method (gptq) reads; None: the model's own
    auto: bool = False  # `--quant auto`: the export measures the int4 / int8 mix under quant.max_kl first
    state_op: str = "auto"  # ONNX: the fused step graph's state op (STATE_OPS)

    def __post_init__(self) -> None:
        if self.target not in TARGET_FLAVORS:
            raise ConfigError(f"unknown export target {self.target!r}; expected one of {', '.join(TARGET_FLAVORS)}")
        choices = TARGET_FLAVORS[self.target]
        flavor = self.flavor or choices[0]
        if flavor not in choices:
            raise ConfigError(f"--flavor {flavor} is not a {self.target} flavor; expected one of {', '.join(choices)}")
        object.__setattr__(self, "flavor", flavor)
        object.__setattr__(self, "output", Path(self.output))
        pw = self.quant.prefill_weights
        if pw not in TARGET_PREFILL_WEIGHTS[self.target]:
            raise ConfigError(f"--prefill-weights {pw} is not offered by the {self.target} target (it has no separate "
                              f"prompt weights); expected {' or '.join(TARGET_PREFILL_WEIGHTS[self.target])}")
        if pw != "same" and flavor not in PREFILL_GRAPH_FLAVORS:
            raise ConfigError(f"--prefill-weights {pw} needs the standard flavour's separate prompt graph "
                              f"(prefill.onnx); the {flavor} flavour prompts through its one graph")
        check_int4_method_target(self.quant, self.target)
        check_steps(self.steps)
        check_state_op(self.state_op)
        if self.state_op != "auto" and (self.target != "onnx" or flavor not in PREFILL_GRAPH_FLAVORS):
            raise ConfigError(f"--state-op {self.state_op} applies to ONNX artifacts of the standard flavour "
                              f"(model_fused.onnx), not {self.target} {flavor}")

    @property
    def options(self) -> dict[str, str]:
        """The target's options as its export function takes them (and the manifest records them)."""
        fused = self.target == "onnx" and self.flavor in PREFILL_GRAPH_FLAVORS  # the flavour with model_fused.onnx
        return {"flavor": self.flavor, **({"state_op": self.state_op} if fused else {})}

    @property
    def name(self) -> str:
        """The artifact's directory name inside a bundle: `onnx-int4`."""
        return f"{self.target}-{self.quant.scheme.value}"


def export_requests(model: str, output: str | Path, targets: list[str], quants: list[str], *, single: bool,
                    group_size: int = 32, lm_head: str = "auto", embedding: str = "fp32",
                    prefill_weights: str = "same", flavor: str | None = None, steps: int = 64,
                    validate: bool = True, force: bool = False, int4_method: str = "auto",
                    calibration: str | None = None, state_op: str = "auto") -> list[ExportRequest]:
    """The artifacts one export command asks for. `single`: OUTPUT is the one artifact (one target, one
    quant); otherwise OUTPUT/<target>-<quant>/ each. `int4_method` "auto" is each target's measured best
    (quant.DEFAULT_INT4_METHODS). --prefill-weights applies to the int4 artifacts of the
    targets and flavours that offer it, --flavor to the target whose flavour it is."""
    if not targets or not quants:
        raise ConfigError("--target and --quant need at least one value each")
    if len(set(targets)) != len(targets) or len(set(quants)) != len(quants):
        raise ConfigError("--target and --quant must not repeat a value")
    for q in quants:
        QuantScheme.parse(q)
    if int4_method != "auto":
        check_int4_method(int4_method)
    QuantConfig("int4", group_size=group_size, lm_head=lm_head, embedding=embedding,
                prefill_weights=prefill_weights)  # every value is checked, whichever quants are asked
    for t in targets:
        if t not in TARGET_FLAVORS:
            raise ConfigError(f"unknown export target {t!r}; expected one of {', '.join(TARGET_FLAVORS)}")
    if flavor is not None and not any(flavor in TARGET_FLAVORS[t] for t in targets):
        raise ConfigError(f"--flavor {flavor} is not a flavor of {', '.join(targets)}; expected one of "
                          f"{', '.join(f for t in targets for f in TARGET_FLAVORS[t])}")
    check_state_op(state_op)
    if state_op != "auto" and "onnx" not in targets:
        raise ConfigError(f"--state-op {state_op} applies to ONNX artifacts (model_fused.onnx); this export "
                          f"makes {', '.join(targets)} only")
    if single and (len(targets), len(quants)) != (1, 1):
        raise ConfigError("a single artifact is one --target and one --quant")
    if not validate and not single:
        raise ConfigError("--no-validate is for a single artifact (--target T --quant Q); a report needs the gate")

    text = calibration is not None or has_heldout_text(model)

    def method_of(t: str) -> str:  # "auto": the target's measured best (quant.DEFAULT_INT4_METHODS)
        if int4_method != "auto":
            return int4_method
        return DEFAULT_INT4_METHODS[t] if text else DEFAULT_DATA_FREE_INT4_METHODS[t]

    def request(t: str, q: str) -> ExportRequest:
        fl = flavor if flavor in TARGET_FLAVORS[t] else None
        fl_resolved = fl or TARGET_FLAVORS[t][0]
        pw = prefill_weights if (q == "int4" and prefill_weights in TARGET_PREFILL_WEIGHTS[t]
                                 and fl_resolved in PREFILL_GRAPH_FLAVORS) else "same"
        qc = QuantConfig(q, group_size=group_size, lm_head=lm_head, embedding=embedding, prefill_weights=pw,
                         int4_method=method_of(t))
        out = Path(output) if single else Path(output) / f"{t}-{QuantScheme.parse(q).value}"
        return ExportRequest(model, t, qc, out, fl, steps, validate, force, calibration,
                             state_op=state_op if (t, fl_resolved) == ("onnx", "standard") else "auto")

    if single:  # one artifact: every option must apply to it as given
        fl = flavor or TARGET_FLAVORS[targets[0]][0]
        qc = QuantConfig(quants[0], group_size=group_size, lm_head=lm_head, embedding=embedding,
                         prefill_weights=prefill_weights, int4_method=method_of(targets[0]))
        return [ExportRequest(model, targets[0], qc, Path(output), fl, steps, validate, force, calibration,
                              state_op=state_op)]
    requests = [request(t, q) for t in targets for q in quants]
    if prefill_weights != "same" and all(r.quant.prefill_weights == "same" for r in requests):
        raise ConfigError(f"--prefill-weights {prefill_weights} applies to ONNX int4 artifacts (standard flavour), "
                          "and this export makes none")
    return requests


def check_state_op(state_op: str) -> None:
    if state_op not in STATE_OPS:
        raise ConfigError(f"unknown --state-op {state_op!r}; expected one of {', '.join(STATE_OPS)}")
