"""`export` and `verify`: artifacts made and re-checked against eager PyTorch."""
from __future__ import annotations

import click

from ...contract import TARGET_FLAVORS
from ...contract.quant import INT4_METHODS, QuantScheme
from ...contract.request import DEFAULT_QUANTS, DEFAULT_TARGETS, STATE_OPS, has_heldout_text
from ...errors import ConfigError
from ..cli_utils import CommaChoice, emit, info, int_list

PRECISION = click.Choice(["fp32", "int8", "int4"])
FLAVORS = sorted({f for fs in TARGET_FLAVORS.values() for f in fs})


@click.command("export")
@click.argument("model")
@click.option("--target", type=CommaChoice(tuple(TARGET_FLAVORS)), default=None,
              help="Comma-separated targets. Default: both when --quant is not given either, else onnx.")
@click.option("--quant", type=CommaChoice((*(s.value for s in QuantScheme), "auto")), default=None,
              help="Comma-separated weight precisions: fp32 (the checkpoint's weights, unquantized), int8 (8-bit "
                   "per output channel), int4 (4-bit groups of --group-size; lm_head int8), auto (int4 / int8 per "
                   "linear and fp32 / int8 / int4 embedding by measured sensitivity, the smallest mix under "
                   "--max-kl; one artifact). Default: "
                   "int8,int4 when --target is not given either, else fp32.")
@click.option("--max-kl", type=float, default=None,
              help="--quant auto: the bound on KL(fp32 || eager with the artifact's rounding) on calibration text, "
                   "in nats per token (all-int8 is ~1e-3 on the demo, all-int4 ~1e-2; with gptq a bound equal to "
                   "int8's KL gives a smaller artifact than --quant int8).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Calibration text for --quant auto and --int4-method gptq (UTF-8, or .jsonl with a \"text\" per "
                   "line). Default: the model's heldout.txt (gptq reads it from its end; auto with gptq measures "
                   "on the tokens before those), else text the fp32 model samples (gptq) or the gate's validation "
                   "text (auto with a data-free method).")
@click.option("--group-size", default=32, show_default=True, help="Group size of int4 weights (a power of two, 16-4096).")
@click.option("--lm-head", type=click.Choice(["auto", "fp32", "int8", "int4"]), default="auto", show_default=True,
              help="lm_head precision: auto = int8 under int4, else the --quant precision.")
@click.option("--embedding", type=PRECISION, default="fp32", show_default=True, help="Embedding precision.")
@click.option("--prefill-weights", default="same", show_default=True, type=click.Choice(["same", "int8"]),
              help="ONNX int4 only: `int8` stores int8 copies of the int4 weights for the prompt graph (weights.bin "
                   "~1.7x larger). By default (same) the runner derives int8 prompt weights from the int4 codes when "
                   "it opens the prompt graph (prefill_int8.onnx; ~1.8x faster prompts on AVX2 than onnxruntime's "
                   "int4 GEMM, ~2 s more to open on a 270M model); `int8` saves that derivation, and its copies are "
                   "rounded from the fp32 weights rather than from the int4 codes. Decode is unchanged.")
@click.option("--int4-method", type=click.Choice(["auto", *INT4_METHODS]), default="auto", show_default=True,
              help="How int4 weights are rounded: rtn (round to nearest per group), hqq (half-quadratic; ONNX: "
                   "fp32 zero points, larger and slower to decode) or gptq (error feedback on calibration text, "
                   "--calibration; rtn's size and speed; the artifact's int8 linears are gptq's too). auto: gptq where there is calibration text (--calibration "
                   "or the model's heldout.txt), else rtn (onnx) / hqq (executorch); docs/quantization.md has the "
                   "measurements. Recorded in the manifest with its parameters.")
@click.option("--flavor", type=click.Choice(FLAVORS), default=None,
              help="ExecuTorch: runner (default; state in the program, stock LLM runner) or io (state in/out). "
                   "ONNX: standard (default; step + prefill graphs) or genai (one graph onnxruntime-genai runs).")
@click.option("--state-op", type=click.Choice(STATE_OPS), default="auto", show_default=True,
              help="ONNX: the op model_fused.onnx updates the state with. standard = ai.onnx LinearAttention "
                   "(opset 27), for any runtime that implements opset 27; contrib = com.microsoft's, which "
                   "onnxruntime >= 1.25 runs with its kernel; auto = standard where the installed onnxruntime has "
                   "a kernel for it, else contrib (onnxruntime 1.32 runs the standard op's function body, ~1.5x "
                   "slower per token on the demo). The choice is recorded in the manifest's options.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact directory (or directory of them).")
@click.option("--steps", default=64, show_default=True, help="Teacher-forced validation steps.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Run the parity gate before writing. --no-validate writes \"validation\": \"skipped\" into the "
                   "manifest (benchmarks of random weights); `verify` runs the gate later.")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Several artifacts: a short bench of each in the report (decode at context 0 and 2048).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (the whole directory) if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or the report) as JSON.")
def export_cmd(model, target, quant, max_kl, calibration, group_size, lm_head, embedding, prefill_weights, int4_method,
               flavor, state_op, output, steps, validate, bench, force, as_json):
    """Export MODEL to verified ONNX / ExecuTorch artifacts, with a report.

    MODEL is `demo`, a native model directory or any supported checkpoint. With one --target and one
    --quant, OUTPUT is that one artifact (+ manifest.json). Otherwise (by default: both targets at int8
    and int4) OUTPUT holds one artifact per target x quant (OUTPUT/onnx-int4/, ...), each gated, scored
    for quality (held-out perplexity, or KL / top-1 vs fp32) and briefly benched, plus OUTPUT/report.md
    and report.json; a failed target x quant is reported and the others still finish (exit non-zero).

    Every artifact is run against eager PyTorch for --steps teacher-forced steps (batch 1 and 3, step and
    prefill paths) before it is kept; past the tolerance of the quant mode nothing is written (exit 3).
    The checkpoint is read one layer at a time, export and gate alike (bf16/fp16 upcast per tensor), so a
    7B model exports in ~12 GB.

    \b
    Examples:
      retnet-edge export demo -o out/demo                      # 4 artifacts + out/demo/report.md
      retnet-edge export demo --target onnx --quant int4 -o out/demo-onnx-int4
      retnet-edge export my-model --target executorch --quant int8,int4 --no-bench -o out/pte
      retnet-edge export my-model --target onnx --quant int4 --prefill-weights int8 -o out/fast-prompts
      retnet-edge export demo --target executorch --quant int4 --int4-method hqq -o out/pte-hqq
      retnet-edge export my-model --target onnx --quant int4 --int4-method gptq --calibration text.txt -o out/gptq
      retnet-edge export demo --target onnx --quant auto --max-kl 0.005 -o out/demo-auto
      retnet-edge export demo --target onnx --quant int8 --state-op standard -o out/opset27
    """
    from ...base.progress import bar_enabled
    from ...contract.request import export_requests

    targets = target or (list(DEFAULT_TARGETS) if quant is None else ["onnx"])
    quants = quant or (list(DEFAULT_QUANTS) if target is None else ["fp32"])
    single = len(targets) == 1 and len(quants) == 1 and (target is not None or quant is not None)
    options = dict(group_size=group_size, lm_head=lm_head, embedding=embedding, prefill_weights=prefill_weights,
                   flavor=flavor, steps=steps, validate=validate, force=force, int4_method=int4_method,
                   state_op=state_op)
    if "auto" in quants:
        from ...exporters.sensitivity import auto_export_request

        if quants != ["auto"]:
            raise ConfigError("--quant auto makes one artifact: give it alone (--target T --quant auto --max-kl X)")
        requests = [auto_export_request(model, output, targets, max_kl, calibration, **options)]
        single = True
    elif max_kl is not None:
        raise ConfigError("--max-kl is for --quant auto")
    else:
        requests = export_requests(model, output, targets, quants, single=single, calibration=calibration, **options)
        if calibration is not None:
            check_calibration_used(requests, calibration)
        elif int4_method == "auto" and any(r.quant.scheme == QuantScheme.INT4 for r in requests) \
                and model_found(model) and not has_heldout_text(model):  # (a missing model: the export's one line)
            info("note: no calibration text (--calibration FILE, or heldout.txt beside the model): int4 is rounded "
                 "data-free (onnx rtn, executorch hqq); with text, gptq (docs/quantization.md: KL ~0.6x rtn's)")
    if single:
        from ...exporters import export_artifact

        art = export_artifact(requests[0], log=info, show_bar=bar_enabled(as_json))
        emit(art.manifest.to_dict(), as_json, f"wrote {art.path}: " + ", ".join(
            f"{k} {v.bytes / 2**20:.2f} MiB" for k, v in art.manifest.files.items()) + "\n" + verdict(art.manifest))
        return
    from ..bundle import export_bundle
    from ..report import render_table

    report = export_bundle(requests, output, bench=bench, force=force, log=info, show_bar=bar_enabled(as_json))
    emit(report, as_json, render_table(report))
    failed = [a for a in report["artifacts"] if a["status"] != "ok"]
    if failed:
        click.get_current_context().exit(max(a["exit_code"] for a in failed))


def model_found(model: str) -> bool:
    from ...base.paths import resolve_path
    from ...errors import RetNetEdgeError

    try:
        resolve_path(model)
    except (RetNetEdgeError, OSError):
        return False
    return True


def check_calibration_used(requests, calibration: str) -> None:
    """--calibration must reach an artifact that reads it, and a bad file fails before any export starts."""
    from ...contract.quant import CALIBRATED_METHODS
    from ...exporters.calibration import read_calibration

    if not any(r.quant.scheme == QuantScheme.INT4 and r.quant.int4_method in CALIBRATED_METHODS for r in requests):
        raise ConfigError("--calibration is for --quant auto and int4 exports with --int4-method "
                          + " / ".join(CALIBRATED_METHODS))
    read_calibration(calibration)


def verdict(manifest) -> str:
    """One line: how the artifact validated (its worst check), or that it was not."""
    worst = manifest.worst_check()
    if worst is None:
        return "validation skipped (--no-validate): not checked against eager PyTorch"
    conf = worst.get("top1_confident")
    where = f"{conf:.3f} where eager is confident" if conf is not None else "eager is nowhere confident"
    rounding = f" (rounding alone: {worst['rounding_kl']:.2e})" if worst.get("rounding_kl") is not None else ""
    return (f"validated: top-1 {worst['top1']:.3f} ({where}), KL {worst['kl']:.2e}{rounding}, max rel "
            f"{worst['max_rel']:.2e} (worst check)")


@click.command("verify")
@click.argument("path")
@click.option("--model", "model_path", help="Source model (default: the one recorded in each manifest).")
@click.option("--steps", default=64, show_default=True, help="Teacher-forced tokens per check.")
@click.option("--positions", default=None, help="Token counts at which the state is compared per layer "
              "(default: 1, 4, 16, ... and --steps).")
@click.option("--forms", is_flag=True, help="PATH is a model: compare its parallel, chunkwise and recurrent forms.")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(path, model_path, steps, positions, forms, as_json):
    """Re-check artifacts against their source model and show where they diverge (exit 3 on failure).

    PATH is an artifact directory or a directory of them (`export -o DIR`). Each artifact's files are
    re-hashed against its manifest, its validation gate is rerun, and the recurrent state is compared
    with eager PyTorch layer by layer after --positions tokens: the first layer that moves away is where
    a kernel, a quantized projection or the state hand-off goes wrong. With --forms, PATH is a model and
    its three forms are compared the same way.

    \b
    Examples:
      retnet-edge verify out/demo                 # every artifact of a multi-artifact export
      retnet-edge verify out/pte --model ./my-model --json
      retnet-edge verify demo --forms --steps 128
    """
    from ...exporters.divergence import default_positions
    from ...exporters.validate import raise_if_failed

    pos = int_list(positions, "--positions") if positions else None
    if forms:
        from ...errors import ParityError
        from ...exporters.pipeline import verify_forms

        doc = verify_forms(path, steps, pos, log=info)
        emit(doc, as_json, "\n".join(f"logits {k}: max rel {v:.2e}" for k, v in doc["logits_max_rel"].items())
             + f"\n{'passed' if doc['passed'] else 'FAILED'} (tolerance {doc['tolerance']:.0e})")
        if not doc["passed"]:
            raise ParityError(f"the forms of {path} disagree past {doc['tolerance']:.0e}; the tables above show where")
        return
    from ...exporters.pipeline import artifact_dirs, verify_artifact

    results, dirs = [], artifact_dirs(path)
    for d in dirs:
        if len(dirs) > 1:
            info(f"verifying {d}")
        results.append(verify_artifact(d, model_path, steps, pos or default_positions(steps), log=info))
    lines = [f"{'passed' if r.report.passed else 'FAILED'}  {r.path}" for r in results]
    emit([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(), as_json, "\n".join(lines))
    for r in results:
        raise_if_failed(r.report, str(r.path), exporting=False)
