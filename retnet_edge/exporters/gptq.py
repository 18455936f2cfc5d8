"""GPTQ for the quantized linears of a `--int4-method gptq` artifact: integers and scales chosen with calibration
activations, for its int4 linears and for the ones it keeps at int8 (the head by default, `--quant auto`'s
int8 linears).

Round-to-nearest rounds each weight alone. GPTQ (Frantar et al. 2022, arXiv 2210.17323) rounds the columns
of W [N, K] one at a time and moves each column's rounding error onto the columns not yet rounded, weighted
by the inverse Hessian of the layer's reconstruction loss, H = XᵀX over calibration inputs X [n, K]: the
rounded layer's output on those inputs stays close to the fp32 one. Here:

- int4 scales are symmetric per group of `group` inputs (the targets' int4 layout: ONNX MatMulNBits without
  zero points, torchao's scale-only intx), chosen when GPTQ reaches a group, on the error-updated weights,
  by a small search over clipping ratios (the group's squared rounding error, each input weighted by its
  mean square activation), and once every integer is chosen, refit to them by least squares on the
  layer's output (`refit_scales`); int8 is one group per row (the targets' per-channel int8), in the target's
  range (`QuantPlan.int8_qmax`). Why int8 too: on the demo, GPTQ halves int8 weights' share of the int8 KL
  (0.00041 -> 0.00023 with the activations in fp32; 0.00095 -> 0.00083 with the ONNX GEMM's 8-bit rows),
  the room `--quant auto` spends on int4 linears and an int8 embedding at int8's own KL;
- sequential over layers: layer i's Hessians come from the outputs of layers 0..i-1 *already rounded*, so
  each layer corrects what the earlier ones got wrong. The checkpoint is read one layer at a time (the
  export's memory bound), activations of the calibration windows are the only thing carried along;
- the chosen integers and scales are written as .npy files under a directory (`QuantCodes`), read back by
  the target exporters (ONNX: the MatMulNBits initializers; ExecuTorch: the torchao tensors), so neither
  target re-rounds them (a re-rounding with fresh scales undoes the error feedback: onnxruntime's own GPTQ
  does that, docs/quantization.md).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints.streaming import ModelWeights, StreamedStack
from ..base.tokenizer import Tokenizer
from ..contract.quant import QuantConfig, QuantPlan
from ..core.ops import rotary_cos_sin
from ..core.retention import ChunkCore
from ..errors import ConfigError, ExportError

QMIN, QMAX = -8, 7
DAMP = 0.1  # fraction of the mean Hessian diagonal added to it (0.01, the paper's: KL 0.67 vs 0.65 x rtn, 8k tokens)
BLOCK = 128  # columns updated together before the lazy update of the rest (the paper's default)
# the scale search's candidates, as fractions of max |w| / 7 (7/8 = 0.875: the largest negative value at -8)
CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(13))  # 1.0 .. 0.7
# int8 rows are not clipped: a row's scale is max |w| / qmax (demo, ONNX, all-int8 KL: 0.00080 unclipped,
# 0.00082 searching 0.93-1.0, 0.00096 searching int4's 0.70-1.0: the search's weighted weight error is not
# the output's once GPTQ moves errors along a whole row)
INT8_CLIP_RATIOS = (1.0,)
GPTQ_TOKENS = 16384  # 32 windows of 512 (demo, eager, g32: KL vs MLAS rtn 0.61 at 16k tokens, 0.65 at 8k)
CODES_DIR = ".int4-codes"  # inside the export's temporary directory, removed before the manifest is written
# without calibration text the model samples its own, reading the checkpoint once per sampled position (127
# times, a state read and written per token per sequence): past this size gptq without text is refused
SAMPLE_MAX_PARAMETERS = 1_000_000_000
BATCH_WINDOWS = 4  # calibration windows per forward pass (activations of 4 x 512 tokens at a time)
PARAMS = (f"damp {DAMP}, block {BLOCK}, scale search {min(CLIP_RATIOS):.2f}-1.0 x max/7 weighted by H_jj, "
          "scales refit by least squares, sequential over layers; int8 linears per channel, their scales up front")


def group_scales(w: Tensor, negative: bool = False, importance: Tensor | None = None,
                 qrange: tuple[int, int] = (QMIN, QMAX)) -> Tensor:
    """w [N, g] -> scales [N]: per row, the candidate scale whose rounding to qrange ([-8, 7]) has the least
    squared error. Candidates: `CLIP_RATIOS` x max |w| / 7 (positive); with `negative` (a kernel that takes a
    negative scale) also the ratios x (the largest-magnitude value) / -8, which puts that value at -8
    whatever its sign (MLAS' symmetric rule at ratio 1): the side of the range with the extra level follows
    the group's largest value. `importance` [g] weighs each input's squared error (GPTQ passes H's diagonal,
    the mean square activation: KL 0.67 vs 0.75 x rtn's unweighted, demo)."""
    qmin, qmax = qrange
    ratios = CLIP_RATIOS if qmax <= QMAX else INT8_CLIP_RATIOS
    top = w.abs().amax(-1, keepdim=True).clamp_min(1e-12)  # [N, 1]
    candidates = [top * r / qmax for r in ratios]
    if negative:
        signed = torch.gather(w, -1, w.abs().argmax(-1, keepdim=True))
        signed = torch.where(signed == 0, torch.ones_like(signed), signed)
        candidates += [signed * r / qmin for r in ratios]
    best_err = torch.full((w.shape[0],), math.inf)
    best = candidates[0].squeeze(-1)
    for s in candidates:  # [N, 1] each
        err = ((torch.clamp(torch.round(w / s), qmin, qmax) * s - w) ** 2)
        err = (err * importance).sum(-1) if importance is not None else err.sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s.squeeze(-1), best)
    return best


def gptq_linear(w: Tensor, h: Tensor, group: int, negative_scales: bool = False,
                qrange: tuple[int, int] = (QMIN, QMAX)) -> tuple[Tensor, Tensor]:
    """w [N, K] fp32, h [K, K] (XᵀX / n) -> (codes int8 [N, K] in qrange ([-8, 7]), scales fp32 [N, K / group]);
    negative_scales: see `group_scales`; int8 per channel is group = K, qrange (-qmax, qmax). Columns in their own order (act-order with static groups measured
    worse here: KL 0.67-0.73 vs 0.65-0.67 x rtn's, demo), then the scales refit to the integers."""
    w = w.detach().float().clone()
    w0 = w.clone()
    n_out, k = w.shape
    h = h.double().clone()
    dead = torch.diag(h) == 0  # inputs never active in calibration: any value, they never matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMP * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    importance = torch.diag(h).float()  # [K]: how much each input's error costs (E[x_j²] + damping)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except torch.linalg.LinAlgError as exc:  # a singular H after damping: non-finite activations
        raise ExportError(f"GPTQ: the calibration Hessian ({k} inputs) is not positive definite",
                          hint="check the calibration text and the weights, or use --int4-method rtn") from exc
    codes, scales = _gptq_pass(w, hinv, importance, group, negative_scales, qrange)
    # (a second sweep with the refit scales held fixed: KL 0.63 vs 0.59 x rtn's, demo: not kept)
    return codes, refit_scales(w0, codes, scales, h, group, negative_scales)


def _gptq_pass(w: Tensor, hinv: Tensor, importance: Tensor, group: int, negative_scales: bool,
               qrange: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """One GPTQ sweep over w's columns (w is updated in place), each group's scale chosen as it is reached."""
    n_out, k = w.shape
    codes = torch.zeros(n_out, k, dtype=torch.int8)
    scales = torch.zeros(n_out, k // group)
    # int4: a group gets its scale when GPTQ reaches it, on fully updated columns (a group wider than a block
    # widens the block). int8 (one group per row) gets its scales up front, as the paper's per-channel
    # ones: a whole-K block would rewrite the rows once per column (2 TB of memory traffic for a 7B down
    # projection)
    static = qrange[1] > QMAX
    step = BLOCK if static else max(BLOCK, group)
    if static:
        for g0 in range(0, k, group):
            scales[:, g0 // group] = group_scales(w[:, g0:g0 + group], negative_scales, importance[g0:g0 + group],
                                                  qrange)
    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        wb, errs = w[:, b0:b1].clone(), torch.zeros(n_out, b1 - b0)
        hb = hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            if col % group == 0 and not static:
                scales[:, col // group] = group_scales(wb[:, j:j + group], negative_scales,
                                                       importance[col:col + group], qrange)
            s = scales[:, col // group]
            q = torch.clamp(torch.round(wb[:, j] / s), *qrange)
            codes[:, col] = q.to(torch.int8)
            err = (wb[:, j] - q * s) / hb[j, j]
            wb[:, j:] -= err[:, None] * hb[j, j:][None, :]
            errs[:, j] = err
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return codes, scales


def refit_scales(w: Tensor, codes: Tensor, scales: Tensor, h: Tensor, group: int, negative: bool,
                 rows: int = 128) -> Tensor:
    """The scales that, for GPTQ's integers, minimise the layer's output error on the calibration inputs:
    per row, argmin_s (w - Q s)ᵀ H (w - Q s) with Q [K, G] the row's integers by group, i.e. the G x G system
    (Qᵀ H Q) s = Qᵀ H w (`rows` rows at a time: the intermediate is rows x K x G). A group whose integers are
    all zero, or (without `negative`) a scale that would turn negative, keeps GPTQ's."""
    n_out, k = w.shape
    g = k // group
    h = h.float()
    hw = (w.float() @ h).view(n_out, g, group)  # [N, G, group]: (H w) by group
    out = scales.clone()
    for r0 in range(0, n_out, rows):
        q = codes[r0:r0 + rows].float().view(-1, g, group)  # [n, G, group]
        t = torch.einsum("kbj,nbj->nkb", h.view(k, g, group), q).view(-1, g, group, g)  # H Q, rows by group
        lhs = torch.einsum("nai,naib->nab", q, t)  # [n, G, G]: Qᵀ H Q
        rhs = (q * hw[r0:r0 + rows]).sum(-1)  # [n, G]: Qᵀ H w
        live = q.abs().sum(-1) > 0
        lhs = lhs + torch.diag_embed((~live).float())  # a dead group's row: s = 0, replaced below
        fit = torch.linalg.solve(lhs, torch.where(live, rhs, torch.zeros_like(rhs)))
        ok = live & torch.isfinite(fit) & (fit != 0) & ((fit > 0) | negative)
        out[r0:r0 + rows] = torch.where(ok, fit, scales[r0:r0 + rows])
    return out


class QuantCodes:
    """Integers and scales per linear module (`layers.3.ffn.fc1`) and bit width, as .npy files in one directory,
    so a 7B model's codes never sit in memory together: codes int8 [N, K], scales fp32 [N, K / group] (int8:
    [N, 1]). A module planned at int4 for the step graph may be int8 in the prompt graph
    (`QuantPlan.for_graph`): the bit width keeps the two apart."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.errors: dict[str, tuple[float, float]] = {}  # int4 module -> (its relative output error, rtn's)

    def worst(self, n: int = 5) -> list[dict]:
        return worst_layers(self.errors, n)

    def _paths(self, module: str, bits: int) -> tuple[Path, Path]:
        return (self.directory / f"{module}.int{bits}.codes.npy", self.directory / f"{module}.int{bits}.scales.npy")

    def put(self, module: str, codes: Tensor, scales: Tensor, bits: int = 4) -> None:
        qp, sp = self._paths(module, bits)
        np.save(qp, codes.numpy())
        np.save(sp, scales.numpy().astype(np.float32))

    def get(self, module: str, bits: int = 4) -> tuple[np.ndarray, np.ndarray] | None:
        qp, sp = self._paths(module, bits)
        if not qp.is_file():
            return None
        return np.load(qp), np.load(sp)

    def dequantized(self, module: str, bits: int = 4) -> Tensor | None:
        """The module's weight as its integers and scales give it back: [N, K] fp32."""
        got = self.get(module, bits)
        if got is None:
            return None
        q, s = (torch.from_numpy(a) for a in got)
        return (q.float().view(q.shape[0], s.shape[1], -1) * s[..., None]).reshape(q.shape)


def worst_layers(errors: dict[str, tuple[float, float]], n: int = 5) -> list[dict]:
    """The n modules with the largest relative output error, as the manifest's `quant_layers` holds them."""
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [{"module": m, "error": float(f"{e:.4g}"), "rtn_error": float(f"{r:.4g}")} for m, (e, r) in ranked]


def output_errors(w: Tensor, wq: Tensor, h: Tensor, group: int) -> tuple[float, float]:
    """(relative output error of wq, of round-to-nearest) on the calibration inputs whose XᵀX / n is h:
    tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), i.e. ||X ΔWᵀ||² / ||X Wᵀ||² — what the layer's output lost to rounding."""
    from .fake_quant import round_weight

    h = h.float()
    w = w.detach().float()
    total = float(((w @ h) * w).sum()) or 1.0

    def rel(d: Tensor) -> float:
        return float(((d @ h) * d).sum()) / total

    return rel(w - wq), rel(w - round_weight(w, "int4", group))


class _HessianHook:
    """Forward pre-hook summing XᵀX of a linear's inputs (fp64: sums over 10⁴ tokens)."""

    def __init__(self, k: int):
        self.h, self.n = torch.zeros(k, k, dtype=torch.float64), 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        self.h += x.T @ x
        self.n += x.shape[0]

    def hessian(self) -> Tensor:
        return self.h / max(self.n, 1)


def _round_linear(codes: QuantCodes, module: str, linear: nn.Linear, h: Tensor, precision: str, plan: QuantPlan,
                  negative_scales: bool) -> None:
    """GPTQ one linear at its planned precision, store its codes, and give `linear` the rounded weight (so
    the layers after it see it rounded). int4: groups of plan.group_size, its output error recorded; int8:
    one scale per row in the target's range."""
    if precision == "int4":
        q, s = gptq_linear(linear.weight, h, plan.group_size, negative_scales)
    else:
        q, s = gptq_linear(linear.weight, h, linear.in_features, qrange=(-plan.int8_qmax, plan.int8_qmax))
    bits = BITS[precision]
    codes.put(module, q, s, bits)
    wq = codes.dequantized(module, bits)
    if precision == "int4":
        codes.errors[module] = output_errors(linear.weight, wq, h, plan.group_size)
    linear.weight = nn.Parameter(wq, requires_grad=False)  # not copy_: the tensor may be the checkpoint's own


BITS = {"int4": 4, "int8": 8}


def calibrated_linears(plan: QuantPlan) -> dict[str, str]:
    """{module: precision} GPTQ rounds: every int4 and int8 linear (the embedding is a Gather, not a matmul:
    it keeps the target's rounding; an int4 linear whose width is not a multiple of the group is already
    int8 in the plan)."""
    return {n: p for n, p in plan.precision.items() if p in BITS and n != plan.embedding}


@torch.no_grad()
def streamed_linears(weights: ModelWeights, ids: np.ndarray, linears: set[str],
                     visit: Callable[[str, nn.Linear, Tensor], None], log=lambda s: None, label: str = "") -> None:
    """Calibration windows ids [W, T] through the checkpoint one layer at a time: each layer runs once with a
    hook summing XᵀX of the linears named in `linears`, then `visit(name, linear, H)` per linear (it may
    replace the linear's weight), then the layer runs again, so the next one sees what visit left (GPTQ's
    sequential rounding). The head is visited last, on the final norm's output."""
    cfg = weights.cfg
    x_ids = torch.from_numpy(ids)
    positions = torch.arange(x_ids.shape[1])
    stack = StreamedStack(weights)
    stack.load_outer()
    try:
        core = ChunkCore(stack.log_gamma, positions, cfg.normalize, chunk_size=64)
        cos, sin = rotary_cos_sin(positions, stack.freqs)
        batches = [x_ids[i:i + BATCH_WINDOWS] for i in range(0, len(x_ids), BATCH_WINDOWS)]
        xs = [stack.embed_tokens(b) for b in batches]  # [b, T, D] per batch of windows
        zero_state = lambda x: torch.zeros(x.shape[0], *cfg.state_shape)  # noqa: E731  [b, H, Dk, Dv]
        for i in range(cfg.n_layers):
            layer = weights.layer(i)
            names = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear) and f"layers.{i}.{n}" in linears}
            hooks = {n: _HessianHook(m.in_features) for n, m in names.items()}
            handles = [m.register_forward_pre_hook(hooks[n]) for n, m in names.items()]
            for x in xs:
                layer(x, cos, sin, core, zero_state(x))
            for hd in handles:
                hd.remove()
            for n, m in names.items():  # (Hessians of a layer's later linears from its earlier ones already
                visit(f"layers.{i}.{n}", m, hooks[n].hessian())  # rounded: KL 0.61 vs 0.59 x rtn's, demo: not kept)
            xs = [layer(x, cos, sin, core, zero_state(x))[0] for x in xs]
            log(f"  {label} layer {i + 1}/{cfg.n_layers}: {len(names)} linears")
            del layer
        if "lm_head" in linears:
            hook = _HessianHook(stack.lm_head.in_features)
            for x in xs:
                hook(stack.lm_head, (stack.norm(x),))
            visit("lm_head", stack.lm_head, hook.hessian())
    finally:
        stack.embed = stack.embed_norm = stack.norm = stack.lm_head = None


def calibrate(weights: ModelWeights, plan: QuantPlan, ids: np.ndarray, directory: str | Path,
              log=lambda s: None, negative_scales: bool = False) -> QuantCodes:
    """GPTQ every int4 and int8 linear of the plan, layer by layer, on calibration windows ids [W, T]; returns
    the codes (written under `directory`)."""
    codes = QuantCodes(directory)
    planned = calibrated_linears(plan)

    def visit(name: str, linear: nn.Linear, h: Tensor) -> None:
        _round_linear(codes, name, linear, h, planned[name], plan, negative_scales)

    streamed_linears(weights, ids, set(planned), visit, log, "GPTQ")
    return codes


def refuse_non_finite(weights: ModelWeights, plan: QuantPlan) -> None:
    """A NaN / inf weight would poison the sampled text and every later layer's Hessian: name it first (one
    tensor read at a time), as the targets' own check does."""
    for module in calibrated_linears(plan):
        key = f"{module}.weight"
        if key in weights.tensors and not torch.isfinite(weights.read(key)).all():
            raise ExportError(f"weight {key} has NaN or inf values; cannot quantize it",
                              hint="check the checkpoint; an fp32 export keeps them as they are")


def check_can_calibrate(weights: ModelWeights, calibration: str | None) -> None:
    """Without text gptq samples the model's own: past SAMPLE_MAX_PARAMETERS that is refused, up front."""
    from .calibration import has_text

    if not has_text(weights, calibration) and weights.num_parameters() > SAMPLE_MAX_PARAMETERS:
        raise ConfigError(f"gptq needs calibration text for a {weights.num_parameters() / 1e9:.1f}B model (sampling "
                          "its own would read the checkpoint 127 times)",
                          hint="pass --calibration FILE, or --int4-method rtn")


def calibrate_plan(weights: ModelWeights, plan: QuantPlan, qc: QuantConfig, calibration: str | None,
                   tokenizer: Tokenizer | None, directory: Path, log=lambda s: None,
                   negative_scales: bool = False) -> tuple[QuantPlan, QuantConfig]:
    """(the plan carrying GPTQ's codes, qc recording the calibration text and GPTQ's parameters); the codes'
    `worst()` are the manifest's `quant_layers`. negative_scales: the target's int4 kernel takes them
    (`Target.int4_negative_scales`)."""
    from .calibration import calibration_ids

    check_can_calibrate(weights, calibration)
    refuse_non_finite(weights, plan)
    ids, source = calibration_ids(weights, tokenizer, calibration, GPTQ_TOKENS, fallback="sample", log=log)
    planned = calibrated_linears(plan)
    log(f"  GPTQ ({sum(p == 'int4' for p in planned.values())} int4 linears, "
        f"{sum(p == 'int8' for p in planned.values())} int8) on {source} ...")
    codes = calibrate(weights, plan, ids, directory, log, negative_scales)
    recorded = f"{qc.calibration}; gptq: {source}" if qc.calibration else source
    params = PARAMS + (", negative scales" if negative_scales else "")
    return (dataclasses.replace(plan, codes=codes),
            dataclasses.replace(qc, calibration=recorded, int4_params=params))
