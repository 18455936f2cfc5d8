"""Precision chosen by measured sensitivity (`--quant auto --max-kl X`) and the calibration text it measures on.

Each linear's sensitivity is the KL(fp32 || eager) on calibration text when only that linear is int4 and the
rest int8, minus the all-int8 KL: eager PyTorch with the target's rounding (`fake_quant`, the gate's
yardstick), the checkpoint read layer by layer (`reference.StreamedReference`), so memory stays what the
export's gate needs. Then, greedily and deterministically, linears move from int8 to int4 in order of
ΔKL per byte saved while the summed estimate stays under the bound, and the chosen mix is measured once
more (a linear is moved back while the measured KL is over). The result is a QuantConfig: int4 with the
linears kept at int8 named in `int8_modules`, which the manifest records.

Calibration text: `calibration.calibration_ids` (a file, the model's held-out text, else the gate's text).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoints.streaming import ModelWeights
from ..contract import log_softmax
from ..contract.quant import QuantConfig, QuantPlan
from ..contract.request import ExportRequest, export_requests
from ..errors import ConfigError, RetNetEdgeError
from .calibration import calibration_ids, read_calibration
from .reference import StreamedReference
from .target import TARGETS

CALIBRATION_TOKENS = 2048  # 4 windows of 512: per-linear ΔKL differences of 10 % and more are stable there


def _kl(ref_logp: np.ndarray, logits: np.ndarray) -> float:
    return float((np.exp(ref_logp) * (ref_logp - log_softmax(logits))).sum(-1).mean())


@dataclass
class Sensitivity:
    """What `measure` found: the all-int8 KL, each linear's ΔKL at int4, and the bytes int4 saves on it."""

    int8_kl: float
    delta_kl: dict[str, float]
    saved_bytes: dict[str, int]
    calibration: str

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.delta_kl.items(), key=lambda kv: -kv[1])[:n]


def _all_int8(qc: QuantConfig) -> QuantConfig:
    return dataclasses.replace(qc, scheme="int8", lm_head="int8", prefill_weights="same", int8_modules="")


def _plan(weights: ModelWeights, target: str, qc: QuantConfig, int4: set[str]) -> QuantPlan:
    plan = TARGETS.get(target).config_plan(weights.cfg, _all_int8(qc))
    precision = {n: ("int4" if n in int4 else p) for n, p in plan.precision.items()}
    return dataclasses.replace(plan, precision=precision)


def measure(weights: ModelWeights, target: str, qc: QuantConfig, ids: np.ndarray, calibration: str,
            log=lambda s: None) -> Sensitivity:
    """Each linear's ΔKL when it alone is int4 (one layer-streamed eager pass per linear)."""
    ref = log_softmax(StreamedReference(weights).prompt(ids))
    base_plan = _plan(weights, target, qc, set())
    int8_kl = _kl(ref, StreamedReference(weights, base_plan).prompt(ids))
    linears = [n for n, p in base_plan.precision.items() if p == "int8" and n != base_plan.embedding]
    shapes = {n: _shape(weights, n) for n in linears}
    delta, saved = {}, {}
    for i, name in enumerate(linears):
        if shapes[name][1] % qc.group_size:
            continue  # cannot be int4 at this group size (plan_quantization's fallback)
        kl = _kl(ref, StreamedReference(weights, _plan(weights, target, qc, {name})).prompt(ids))
        delta[name] = kl - int8_kl
        out_f, in_f = shapes[name]
        saved[name] = out_f * in_f // 2 - out_f * (in_f // qc.group_size) * 4 + out_f * 4  # 4-bit vs 8-bit + scales
        log(f"  sensitivity {i + 1}/{len(linears)}: {name} ΔKL {delta[name]:+.2e}")
    return Sensitivity(int8_kl, delta, saved, calibration)


def _shape(weights: ModelWeights, name: str) -> tuple[int, int]:
    """(out, in) of a linear from the checkpoint header (the head of a tied model is the embedding)."""
    key = f"{name}.weight"
    if key == "lm_head.weight" and weights.cfg.tie_embeddings:
        key = "embed.weight"
    t = weights.tensors[key]
    return tuple(t.shape)  # type: ignore[return-value]


def choose(s: Sensitivity, max_kl: float) -> list[str]:
    """Linears to make int4, cheapest ΔKL per saved byte first (ties: name), each that keeps int8 KL + Σ ΔKL
    <= max_kl (one that does not is skipped, a cheaper later one may still fit)."""
    order = sorted(s.delta_kl, key=lambda n: (s.delta_kl[n] / s.saved_bytes[n], n))
    chosen, total = [], s.int8_kl
    for name in order:
        if total + max(s.delta_kl[name], 0.0) > max_kl:
            continue
        chosen.append(name)
        total += max(s.delta_kl[name], 0.0)
    return chosen


def check_max_kl(max_kl: float | None) -> float:
    if max_kl is None or not isinstance(max_kl, (int, float)) or not math.isfinite(max_kl) or max_kl <= 0:
        raise ConfigError(f"--max-kl must be a positive number of nats (e.g. 0.01), got {max_kl}")
    return float(max_kl)


def auto_quant(weights: ModelWeights, target: str, qc: QuantConfig, max_kl: float, tokenizer,
               calibration: str | None = None, log=lambda s: None) -> tuple[QuantConfig, dict]:
    """The smallest int4 / int8 mix whose eager KL on calibration text is <= max_kl: (the QuantConfig to export,
    the plan's record: calibration, measured KLs, the worst linears)."""
    max_kl = check_max_kl(max_kl)
    ids, source = calibration_ids(weights, tokenizer, calibration, CALIBRATION_TOKENS)
    log(f"  measuring each linear's sensitivity on {source} ...")
    return plan_under(weights, target, qc, measure(weights, target, qc, ids, source, log), ids, max_kl, log)


def plan_under(weights: ModelWeights, target: str, qc: QuantConfig, s: Sensitivity, ids: np.ndarray, max_kl: float,
               log=lambda s: None) -> tuple[QuantConfig, dict]:
    """`auto_quant` from a measured Sensitivity (several bounds, one measurement: the benchmark)."""
    chosen = choose(s, max_kl)
    ref = log_softmax(StreamedReference(weights).prompt(ids))
    while True:  # the sum is an estimate: measure the mix, and move the last choice back while it is over
        kl = _kl(ref, StreamedReference(weights, _plan(weights, target, qc, set(chosen))).prompt(ids))
        if kl <= max_kl or not chosen:
            break
        chosen.pop()
    int8 = sorted(set(s.delta_kl) - set(chosen) | _unquantizable(weights, target, qc, s))
    auto = dataclasses.replace(qc, scheme="int4", lm_head="int4" if "lm_head" in chosen else "int8",
                               int8_modules=",".join(n for n in int8 if n != "lm_head"), max_kl=max_kl,
                               calibration=s.calibration)
    record = {"max_kl": max_kl, "calibration": s.calibration, "int8_kl": s.int8_kl, "kl": kl, "int4": sorted(chosen),
              "int8": int8, "worst": [{"module": n, "delta_kl": d} for n, d in s.worst()]}
    if not chosen:
        log(f"  no linear fits int4 under --max-kl {max_kl:g} (all-int8 KL {s.int8_kl:.2e}): exporting int8")
    return auto, record


def _unquantizable(weights: ModelWeights, target: str, qc: QuantConfig, s: Sensitivity) -> set[str]:
    """Linears not measured (their width is not a multiple of the group): they stay int8."""
    plan = TARGETS.get(target).config_plan(weights.cfg, _all_int8(qc))
    return {n for n, p in plan.precision.items() if p == "int8" and n != plan.embedding} - set(s.delta_kl)


def auto_export_request(model: str, output: str | Path, targets: list[str], max_kl: float | None,
                        calibration: str | None, log=lambda s: None, **options) -> tuple[ExportRequest, dict]:
    """`export --quant auto --max-kl X`: the one artifact's request with its measured int4 / int8 mix (and the
    plan's record: calibration, the measured KLs, the worst linears). `options` as `export_requests` takes them."""
    from ..base.paths import resolve_path
    from ..base.tokenizer import load_tokenizer
    from ..checkpoints.streaming import open_weights
    from ..contract import tokenizer_file

    if len(targets) != 1:
        raise ConfigError("--quant auto makes one artifact: give one --target")
    max_kl = check_max_kl(max_kl)
    if calibration:
        read_calibration(calibration)  # a bad file is refused before anything is measured
    base = export_requests(model, output, targets, ["int4"], single=True, calibration=calibration, **options)[0]
    if (base.output.exists() or base.output.is_symlink()) and not base.force:  # before minutes of measuring
        raise RetNetEdgeError(f"{base.output} already exists", hint="pass --force to overwrite it")
    src = resolve_path(model)
    weights = open_weights(src)
    tok_file = tokenizer_file(src) if src.is_dir() else None
    qc, record = auto_quant(weights, base.target, base.quant, max_kl, load_tokenizer(tok_file) if tok_file else None,
                            calibration, log)
    log(f"  auto: {len(record['int4'])} linears int4, {len(record['int8'])} int8; eager KL {record['kl']:.2e} "
        f"(all-int8 {record['int8_kl']:.2e}, bound {max_kl:g}); most sensitive: "
        + ", ".join(f"{w['module']} {w['delta_kl']:+.1e}" for w in record["worst"]))
    return dataclasses.replace(base, quant=qc), record
