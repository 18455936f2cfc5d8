"""Precision chosen by measured sensitivity (`--quant auto --max-kl X`) and the calibration text it measures on.

The mix starts from every linear at int8 and the embedding at `--embedding` (fp32 by default). A *move* is
one linear to int4, or the embedding to int8 or int4 (`EMBED_MOVE`); each move's sensitivity is the
KL(fp32 || eager) on calibration text with that move alone, minus the all-int8 KL: eager PyTorch with the
artifact's rounding, the checkpoint read layer by layer (`reference.StreamedReference`), so memory stays
what the export's gate needs. Then, greedily and deterministically, moves are taken in order of ΔKL per
byte saved while the summed estimate stays under the bound, and the chosen mix is measured once more (the
last move is taken back while the measured KL is over). The result is a QuantConfig: int4 with the linears
kept at int8 named in `int8_modules`, the head's and the embedding's precision, which the manifest records.

The artifact's rounding: with a calibrated method (gptq, the default where there is calibration text) the
export rounds *every* linear by GPTQ, int8 ones included, so the measurement does too: GPTQ's integers for
all linears at int4 and at int8 are computed once (two layer-streamed passes, in a temporary directory) and
each measured mix reads them. GPTQ's int8 lands below round-to-nearest int8 (demo, ONNX: KL 0.00083 vs
0.00095), and that room is what lets a mix match `--quant int8`'s own KL with a smaller artifact. With a
data-free method the rounding is the target's round-to-nearest (`fake_quant`) and the room is none.

Calibration text: `calibration.calibration_ids` (a file, the model's held-out text, else the gate's text).
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoints.streaming import ModelWeights
from ..contract import log_softmax
from ..contract.quant import CALIBRATED_METHODS, INT4_METHOD_CANNOT, QuantConfig, QuantPlan
from ..contract.request import ExportRequest, export_requests
from ..errors import ConfigError, RetNetEdgeError
from . import gptq
from .calibration import calibration_ids, read_calibration
from .reference import StreamedReference
from .target import TARGETS

CALIBRATION_TOKENS = 2048  # 4 windows of 512: per-linear ΔKL differences of 10 % and more are stable there
EMBED_MOVE = "{embedding}@{precision}"  # the embedding's moves, as the sensitivity table names them


def _kl(ref_logp: np.ndarray, logits: np.ndarray) -> float:
    return float((np.exp(ref_logp) * (ref_logp - log_softmax(logits))).sum(-1).mean())


@dataclass
class Sensitivity:
    """What `measure` found. int8_kl: `--quant int8`'s eager KL (round-to-nearest), what a user compares a mix
    with; base_kl: the mix's start, every linear int8 rounded as this export rounds (gptq: calibrated);
    delta_kl / saved_bytes: each move's ΔKL over base_kl and the bytes it saves; codes: the calibrated
    integers the measurement read (None for a data-free method)."""

    int8_kl: float
    delta_kl: dict[str, float]
    saved_bytes: dict[str, int]
    calibration: str
    base_kl: float | None = None
    codes: Any = None
    gptq_source: str = ""  # the text gptq's codes were fitted on ("" for a data-free method)

    def __post_init__(self) -> None:
        if self.base_kl is None:
            self.base_kl = self.int8_kl

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.delta_kl.items(), key=lambda kv: -kv[1])[:n]


def _all_int8(qc: QuantConfig) -> QuantConfig:
    return dataclasses.replace(qc, scheme="int8", lm_head="int8", prefill_weights="same", int8_modules="")


def _embedding_move(name: str) -> tuple[str, str] | None:
    """(embedding, precision) of an embedding move, None for a linear's."""
    head, sep, precision = name.rpartition("@")
    return (head, precision) if sep else None


def _plan(weights: ModelWeights, target: str, qc: QuantConfig, moves, codes=None) -> QuantPlan:
    """The all-int8 plan with `moves` applied (a linear's name: int4; an embedding move: its precision)."""
    plan = TARGETS.get(target).config_plan(weights.cfg, _all_int8(qc))
    precision = dict(plan.precision)
    for m in moves:
        emb = _embedding_move(m)
        precision[emb[0] if emb else m] = emb[1] if emb else "int4"
    return dataclasses.replace(plan, precision=precision, codes=codes, int4_method=qc.int4_method)


def _calibrated_codes(weights: ModelWeights, target: str, qc: QuantConfig, ids: np.ndarray, directory: Path,
                      log) -> Any:
    """GPTQ's integers for every linear at int4 and at int8 (two sequential passes into one directory; the
    int8 pass last, so a linear that cannot be int4 keeps the codes of the all-int8 context)."""
    t = TARGETS.get(target)
    all_int4 = t.config_plan(weights.cfg, dataclasses.replace(qc, scheme="int4", lm_head="int4", int8_modules="",
                                                              prefill_weights="same"))
    all_int8 = t.config_plan(weights.cfg, _all_int8(qc))
    log("  GPTQ of every linear at int4, then at int8 (the measured mix's codes are the artifact's) ...")
    codes4 = gptq.calibrate(weights, all_int4, ids, directory, log, negative_scales=t.int4_negative_scales)
    codes = gptq.calibrate(weights, all_int8, ids, directory, log, negative_scales=t.int4_negative_scales)
    codes.errors = dict(codes4.errors)  # each linear's int4 output error (the manifest's quant_layers)
    return codes


def measure(weights: ModelWeights, target: str, qc: QuantConfig, ids: np.ndarray, calibration: str,
            log=lambda s: None, gptq_ids: np.ndarray | None = None, workdir: Path | None = None,
            gptq_source: str = "") -> Sensitivity:
    """Each move's ΔKL (one layer-streamed eager pass per move). With a calibrated qc.int4_method, GPTQ's
    integers (on gptq_ids, else ids) are computed into `workdir` first and every pass reads them."""
    ref = log_softmax(StreamedReference(weights).prompt(ids))
    int8_kl = int8_eager_kl(weights, target, qc, ids, ref)
    codes = None
    if qc.int4_method in CALIBRATED_METHODS:
        if workdir is None:
            raise ValueError("a calibrated method's sensitivity needs a workdir for its codes")
        codes = _calibrated_codes(weights, target, qc, gptq_ids if gptq_ids is not None else ids, workdir, log)
    base_plan = _plan(weights, target, qc, [], codes)
    base_kl = _kl(ref, StreamedReference(weights, base_plan).prompt(ids)) if codes is not None else int8_kl
    moves = _moves(weights, target, qc, base_plan)
    delta, saved = {}, {}
    for i, (name, saves) in enumerate(moves.items()):
        kl = _kl(ref, StreamedReference(weights, _plan(weights, target, qc, [name], codes)).prompt(ids))
        delta[name], saved[name] = kl - base_kl, saves
        log(f"  sensitivity {i + 1}/{len(moves)}: {name} ΔKL {delta[name]:+.2e}")
    return Sensitivity(int8_kl, delta, saved, calibration, base_kl, codes, gptq_source if codes is not None else "")


def int8_eager_kl(weights: ModelWeights, target: str, qc: QuantConfig, ids: np.ndarray,
                  ref: np.ndarray | None = None) -> float:
    """`--quant int8`'s eager KL on ids (round-to-nearest, the target's rounding): what a bound is set against."""
    ref = log_softmax(StreamedReference(weights).prompt(ids)) if ref is None else ref
    return _kl(ref, StreamedReference(weights, _plan(weights, target, qc, [])).prompt(ids))


def _moves(weights: ModelWeights, target: str, qc: QuantConfig, base: QuantPlan) -> dict[str, int]:
    """{move: bytes it saves}. A linear to int4: 4 bits a weight less, plus a 4-byte scale per group, minus the
    row scale int8 had; one whose width is not a multiple of the group has no move (plan_quantization's
    fallback). The embedding to each precision below its own: fp32 -> int8 saves 3 bytes a value, -> int4
    3.5, each less a 4-byte scale per group of a row (no int4 move where the method cannot round a Gather)."""
    g = qc.group_size
    moves = {}
    for name, p in base.precision.items():
        if p != "int8" or name == base.embedding:
            continue
        out_f, in_f = _shape(weights, name)
        if in_f % g == 0:
            moves[name] = out_f * in_f // 2 - out_f * (in_f // g) * 4 + out_f * 4
    rows, width = weights.tensors[f"{base.embedding}.weight"].shape
    bits = {"fp32": 32, "int8": 8, "int4": 4}
    own = bits[base.precision.get(base.embedding, "fp32")]
    for precision in ("int8", "int4"):
        refused = precision == "int4" and (target, qc.int4_method) in INT4_METHOD_CANNOT
        if bits[precision] < own and width % g == 0 and not refused:
            moves[EMBED_MOVE.format(embedding=base.embedding, precision=precision)] = (
                rows * width * (own - bits[precision]) // 8 - rows * (width // g) * 4 * (own == 32))
    return moves


def _shape(weights: ModelWeights, name: str) -> tuple[int, int]:
    """(out, in) of a linear from the checkpoint header (the head of a tied model is the embedding)."""
    key = f"{name}.weight"
    if key == "lm_head.weight" and weights.cfg.tie_embeddings:
        key = "embed.weight"
    t = weights.tensors[key]
    return tuple(t.shape)  # type: ignore[return-value]


def choose(s: Sensitivity, max_kl: float) -> list[str]:
    """Moves to make, cheapest ΔKL per saved byte first (ties: name), each that keeps base KL + Σ ΔKL <= max_kl
    (one that does not is skipped, a cheaper later one may still fit). The embedding's moves exclude each
    other: its int4 move after its int8 one replaces it (what it adds: their difference); its int8 move after
    its int4 one is skipped."""
    order = sorted(s.delta_kl, key=lambda n: (max(s.delta_kl[n], 0.0) / max(s.saved_bytes[n], 1), n))
    chosen, total = [], s.base_kl
    for name in order:
        cost = max(s.delta_kl[name], 0.0)
        emb = _embedding_move(name)
        taken = next((m for m in chosen if emb and (_embedding_move(m) or ("",))[0] == emb[0]), None)
        if taken is not None:
            if emb[1] != "int4":
                continue
            cost -= max(s.delta_kl[taken], 0.0)
        if total + cost > max_kl:
            continue
        if taken is not None:
            chosen.remove(taken)
        chosen.append(name)
        total += cost
    return chosen


def check_max_kl(max_kl: float | None) -> float:
    if max_kl is None or not isinstance(max_kl, (int, float)) or not math.isfinite(max_kl) or max_kl <= 0:
        raise ConfigError(f"--max-kl must be a positive number of nats (e.g. 0.01), got {max_kl}")
    return float(max_kl)


def measurement_ids(weights: ModelWeights, tokenizer, calibration: str | None, qc: QuantConfig, log=lambda s: None
                    ) -> tuple[np.ndarray, str, np.ndarray | None, str]:
    """(the windows each mix is measured on, where they came from, gptq's windows or None, and theirs). With a
    calibrated
    method both come from the same text, gptq's from its end (as the export takes them) and the measured
    ones from just before those where the text is long enough: a mix is judged on tokens gptq did not fit
    (on its own tokens an int4 linear's cost read low, and the artifact missed the bound on held-out text)."""
    if qc.int4_method not in CALIBRATED_METHODS:
        return (*calibration_ids(weights, tokenizer, calibration, CALIBRATION_TOKENS), None, "")
    gptq_ids, gptq_source = calibration_ids(weights, tokenizer, calibration, gptq.GPTQ_TOKENS, fallback="sample",
                                            log=log)
    ids, source = calibration_ids(weights, tokenizer, calibration, CALIBRATION_TOKENS, fallback="sample", log=log,
                                  skip_gptq=gptq.GPTQ_TOKENS)
    return ids, source, gptq_ids, gptq_source


def auto_plan(weights: ModelWeights, target: str, qc: QuantConfig, max_kl: float, tokenizer,
              calibration: str | None, workdir: Path, log=lambda s: None) -> tuple[QuantConfig, dict, Any]:
    """The smallest mix whose eager KL on calibration text is <= max_kl: (the QuantConfig to export, the plan's
    record: calibration, measured KLs, the worst moves; the calibrated codes the measurement read, written
    under `workdir`, or None for a data-free method). The export writes those codes: the mix that met the
    bound is the one that ships."""
    max_kl = check_max_kl(max_kl)
    if qc.int4_method in CALIBRATED_METHODS:
        gptq.check_can_calibrate(weights, calibration)
    gptq.refuse_non_finite(weights, _plan(weights, target, qc, []))  # before minutes of NaN KLs
    ids, source, gptq_ids, gptq_source = measurement_ids(weights, tokenizer, calibration, qc, log)
    log(f"  measuring each move's sensitivity on {source} ...")
    s = measure(weights, target, qc, ids, source, log, gptq_ids, workdir, gptq_source)
    auto, record = plan_under(weights, target, qc, s, ids, max_kl, log)
    codes = s.codes
    if codes is not None:
        int4 = set(record["int4"])
        codes.errors = {m: e for m, e in codes.errors.items() if m in int4}
    return auto, record, codes


def auto_quant(weights: ModelWeights, target: str, qc: QuantConfig, max_kl: float, tokenizer,
               calibration: str | None = None, log=lambda s: None) -> tuple[QuantConfig, dict]:
    """`auto_plan` with its codes in a temporary directory (the library's form: the QuantConfig and record)."""
    with tempfile.TemporaryDirectory(prefix="retnet-edge-auto-") as work:
        return auto_plan(weights, target, qc, max_kl, tokenizer, calibration, Path(work), log)[:2]


def plan_under(weights: ModelWeights, target: str, qc: QuantConfig, s: Sensitivity, ids: np.ndarray, max_kl: float,
               log=lambda s: None) -> tuple[QuantConfig, dict]:
    """`auto_quant` from a measured Sensitivity (several bounds, one measurement: the benchmark)."""
    chosen = choose(s, max_kl)
    ref = log_softmax(StreamedReference(weights).prompt(ids))
    while True:  # the sum is an estimate: measure the mix, and take the last move back while it is over
        kl = _kl(ref, StreamedReference(weights, _plan(weights, target, qc, chosen, s.codes)).prompt(ids))
        if kl <= max_kl or not chosen:
            break
        emb = _embedding_move(chosen.pop())
        back = EMBED_MOVE.format(embedding=emb[0], precision="int8") if emb and emb[1] == "int4" else None
        if back in s.delta_kl:  # the int4 embedding had replaced its int8 move: back to int8, not to fp32
            chosen.append(back)
    plan = _plan(weights, target, qc, chosen)
    int8 = sorted(n for n, p in plan.precision.items() if p == "int8" and n != plan.embedding)
    params = ""
    if s.codes is not None:
        params = gptq.PARAMS + (", negative scales" if TARGETS.get(target).int4_negative_scales else "") + \
            "; codes of the all-int4 and all-int8 passes, as measured"
    auto = dataclasses.replace(qc, scheme="int4", lm_head=plan.precision["lm_head"],
                               int8_modules=",".join(n for n in int8 if n != "lm_head"),
                               embedding=plan.precision[plan.embedding], max_kl=max_kl, auto_kl=float(f"{kl:.6g}"),
                               calibration=s.calibration + (f"; gptq: {s.gptq_source}" if s.gptq_source else ""),
                               int4_params=params)
    record = {"max_kl": max_kl, "calibration": s.calibration, "int8_kl": s.int8_kl, "base_kl": s.base_kl, "kl": kl,
              "int4": sorted(n for n, p in plan.precision.items() if p == "int4" and n != plan.embedding),
              "int8": int8, "embedding": plan.precision[plan.embedding],
              "worst": [{"module": n, "delta_kl": d} for n, d in s.worst()]}
    if not chosen:
        log(f"  nothing fits under --max-kl {max_kl:g} (all-int8 KL {s.base_kl:.2e}): every linear int8")
    return auto, record


def auto_export_request(model: str, output: str | Path, targets: list[str], max_kl: float | None,
                        calibration: str | None, **options) -> ExportRequest:
    """`export --quant auto --max-kl X`: the one artifact's request, its arguments checked before minutes of
    measuring; the export measures the mix (`auto_plan`, inside its temporary directory) and writes it.
    `options` as `export_requests` takes them."""
    if len(targets) != 1:
        raise ConfigError("--quant auto makes one artifact: give one --target")
    max_kl = check_max_kl(max_kl)
    if calibration:
        read_calibration(calibration)  # a bad file is refused before anything is measured
    base = export_requests(model, output, targets, ["int4"], single=True, calibration=calibration, **options)[0]
    if (base.output.exists() or base.output.is_symlink()) and not base.force:  # before minutes of measuring
        raise RetNetEdgeError(f"{base.output} already exists", hint="pass --force to overwrite it")
    return dataclasses.replace(base, quant=dataclasses.replace(base.quant, max_kl=max_kl), auto=True)


def log_plan(record: dict, log) -> None:
    log(f"  auto: {len(record['int4'])} linears int4, {len(record['int8'])} int8, embedding {record['embedding']}; "
        f"eager KL {record['kl']:.2e} (--quant int8: {record['int8_kl']:.2e}, bound {record['max_kl']:g}); most "
        "sensitive: " + ", ".join(f"{w['module']} {w['delta_kl']:+.1e}" for w in record["worst"]))
