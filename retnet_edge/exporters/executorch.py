"""ExecuTorch export: the step lowered to XNNPACK as one partition, in two program flavours.

- `runner` (default): `forward(tokens[1,1], input_pos[1]) -> logits[1,1,V]` with the recurrent state in
  mutable buffers (reset in-graph at input_pos == 0) and the constant methods ExecuTorch's LLM runner
  reads (llama_main, Android LlmModule, iOS apps) — a stock runner drives it with no app code.
- `io`: `forward(input_ids[1,1], position_ids[1,1], *past) -> (logits, *present)`, the ONNX contract.

Stages (each inspectable): quantize (torchao) → torch.export → to_edge_transform_and_lower (XNNPACK)
→ to_executorch → .pte. Quantization is 8-bit dynamic activations with int8 per-channel (8da8w) or int4
group-wise (8da4w) weights; XNNPACK does not support weight-only int8 (measured: silently wrong).
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..base.interrupts import deferred_interrupts
from ..checkpoints.streaming import ModelWeights, build_step
from ..contract import DELEGATION_FILE, PTE_FILE, TARGET_FLAVORS
from ..contract.quant import QuantConfig, QuantPlan
from ..core.graph_check import position_dependent_nodes
from ..core.retention import StepCore
from ..core.step import RetNetStep
from ..errors import ExportError
from .target import register_target

PTE_FLAVORS = TARGET_FLAVORS["executorch"]
DEFAULT_MAX_CONTEXT = 8192  # what the runner may fill; the state itself has no limit


class PerHeadStepCore(StepCore):
    """Eq. 6 on a state held as H tensors [1, Dk, Dv] (batch 1): the runner program's buffers, updated a
    head at a time.

    Per head, the update's intermediates (γS, kᵀv: 0.5 MB each on `small`) stay in a 2 MB L2 between
    XNNPACK ops, where the whole layer's (2 MB each) spilled: `small` int4 C++ harness 27.7 -> 22.0 ms per
    token (same run). No view of S is taken: XNNPACK copies a reshaped partition input or output."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, S: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        _, _, H, Dk = q.shape
        Dv = v.shape[-1]
        gamma = self.gamma.view(H, 1, 1)
        q3, k3, v3 = q.view(H, 1, Dk), k.view(H, Dk, 1), v.view(H, 1, Dv)
        outs, new = [], []
        for h in range(H):  # slices and bmm: what XNNPACK delegates (select and mm it does not)
            kv = torch.bmm(k3[h:h + 1], v3[h:h + 1])  # [1, Dk, Dv]
            s = S[h] * gamma[h:h + 1] + kv
            outs.append(torch.bmm(q3[h:h + 1], s))
            new.append(s)
        o = torch.cat(outs, 0).view(1, 1, H, Dv)
        if self.out_scale is not None:
            o = o * self.out_scale.view(1, 1, H, 1)
        return o, tuple(new)


class RunnerProgram(nn.Module):
    """The step with its state in mutable buffers: the stock LLM runner's forward(tokens, input_pos)."""

    def __init__(self, step: RetNetStep):
        super().__init__()
        self.step = step.with_core(PerHeadStepCore)
        self.heads = step.cfg.n_heads
        # state_{layer}_{head}: [1, Dk, Dv] zeros (kept by InitializedMutableBufferPass), one per head so the
        # step core updates a head at a time in cache (PerHeadStepCore)
        for i, s in enumerate(step.init_state(1)):
            for h in range(self.heads):
                self.register_buffer(f"state_{i}_{h}", s[:, h].clone())

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """tokens [1,1] int64, input_pos [1] int64 -> logits [1,1,V]; position 0 starts a new sequence."""
        # keep = 0 at position 0, folded into the decay (S·(γ·keep) + kᵀv). A multiply (not torch.where,
        # which XNNPACK does not lower) is safe: the buffers start as zeros and only ever hold finite
        # states written by this method.
        keep = (input_pos != 0).to(torch.float32).view(1, 1, 1, 1)
        past = [tuple(getattr(self, f"state_{i}_{h}") for h in range(self.heads))
                for i in range(self.step.cfg.n_layers)]
        logits, *present = self.step.step_from(tokens, input_pos.view(1, 1), past, keep=keep)
        with torch.no_grad():
            for i, heads in enumerate(present):
                for h, s in enumerate(heads):
                    getattr(self, f"state_{i}_{h}").copy_(s)
        return logits


def constant_methods(step: RetNetStep, max_context: int = DEFAULT_MAX_CONTEXT) -> dict:
    """Metadata methods the ExecuTorch LLM runner reads, plus RetNet's own."""
    cfg = step.cfg
    eos = [cfg.eos_id] if cfg.eos_id is not None else []
    return {"get_vocab_size": cfg.vocab_size, "get_bos_id": cfg.bos_id if cfg.bos_id is not None else 0,
            "get_eos_ids": eos, "get_max_seq_len": max_context, "get_max_context_len": max_context,
            "use_kv_cache": True, "enable_dynamic_shape": False, "use_sdpa_with_kv_cache": False,
            "get_n_layers": cfg.n_layers, "get_n_heads": cfg.n_heads, "get_head_dim_k": cfg.head_dim_k,
            "get_head_dim_v": cfg.head_dim_v, "get_state_bytes": cfg.state_bytes(1)}


def quantize_modules(root: nn.Module, plan: QuantPlan, prefix: str = "", skip: str | None = None) -> None:
    """Quantize, in place, the modules of `root` the plan quantizes (their names are `prefix` + the name
    under root): 8-bit dynamic activations with int8 per-channel (8da8w) or int4 group-wise (8da4w)
    weights; the embedding weight-only. int4 scales are chosen by `plan.int4_method`: rtn is torchao's
    affine (min-max) choice, hqq its scale-only half-quadratic solver (`intx_choose_qparams_algorithm`;
    symmetric, so the same bytes per weight and the same XNNPACK kernel). The streamed export calls it per
    layer as each one is read, then on the whole step with `skip="layers."` (the embedding and head)."""
    # torchao only when quantizing: it is slow to import and noisy
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.quantize_.workflows import IntxChooseQParamsAlgorithm

    int4_qparams = {"rtn": IntxChooseQParamsAlgorithm.AFFINE, "hqq": IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY,
                    "gptq": IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY}[plan.int4_method]  # gptq: write_codes
    linear = {"int8": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
              "int4": Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                           weight_granularity=PerGroup(plan.group_size),
                                                           intx_choose_qparams_algorithm=int4_qparams)}
    # the int8 embedding in groups along a row, as ONNX's (one scale per row: demo ΔKL 2.0e-4 vs 6.7e-5)
    embedding = {"int8": IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(plan.group_size)),
                 "int4": IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(plan.group_size),
                                              intx_choose_qparams_algorithm=int4_qparams)}
    for precision in ("int8", "int4"):
        names = {n[len(prefix):] for n in plan.modules(precision)
                 if n.startswith(prefix) and not (skip and n.startswith(skip))}
        if any(isinstance(m, nn.Linear) and n in names for n, m in root.named_modules()):
            quantize_(root, linear[precision], filter_fn=lambda m, n: isinstance(m, nn.Linear) and n in names)
            if plan.codes is not None:
                write_codes(root, plan.codes, names, prefix, bits=8 if precision == "int8" else 4)
            elif plan.capture is not None and precision == "int4":  # what torchao wrote, for the per-layer errors
                for n, m in root.named_modules():
                    if isinstance(m, nn.Linear) and n in names:
                        plan.capture.put(prefix + n, m.weight.dequantize().float().numpy())
        if plan.modules(precision, kind="embedding") and plan.embedding.startswith(prefix):
            emb = plan.embedding[len(prefix):]
            if any(n == emb for n, _ in root.named_modules()):
                config = embedding[precision]
                if root.get_submodule(emb).weight.shape[1] % plan.group_size:
                    if precision == "int4":
                        raise ExportError(f"an int4 embedding needs its width ({root.get_submodule(emb).weight.shape[1]}) "
                                          f"to be a multiple of the group size ({plan.group_size})",
                                          hint="--group-size that divides it, or --embedding int8 / fp32")
                    config = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))  # one scale a row
                quantize_(root, config, filter_fn=lambda m, n: n == emb)


def write_codes(root: nn.Module, codes, names: set[str], prefix: str, bits: int = 4) -> None:
    """The linears in `names` whose module has calibrated integers and scales at `bits` (`exporters.gptq.QuantCodes`)
    take them in place of torchao's own: symmetric (zero point 0), the layout torchao's intx tensor holds
    (int4 scale-only groups; int8 one scale per row), so the same XNNPACK kernel runs them."""
    for n, m in root.named_modules():
        got = codes.get(prefix + n, bits) if isinstance(m, nn.Linear) and n in names else None
        if got is None:
            continue
        w, (q, s) = m.weight, got
        if tuple(w.qdata.shape) != q.shape or w.scale.numel() != s.size:
            raise ExportError(f"{prefix + n}: calibrated codes {q.shape} do not fit torchao's {tuple(w.qdata.shape)}")
        with torch.no_grad():
            w.qdata.copy_(torch.from_numpy(q))
            w.scale.copy_(torch.from_numpy(s).reshape(w.scale.shape).to(w.scale.dtype))
            w.zero_point.zero_()


def quantize_step(step: RetNetStep, plan: QuantPlan) -> RetNetStep:
    """A copy quantized per the plan (new modules, same fp32 tensors until torchao swaps them); the
    original step is untouched."""
    q = copy.deepcopy(step, memo={id(t): t for t in [*step.parameters(), *step.buffers()]})
    quantize_modules(q, plan)
    return q


def lower(module: nn.Module, args: tuple, methods: dict | None, mutable: bool, log,
           guard: bool = True) -> tuple[bytes, dict]:
    """torch.export -> XNNPACK -> .pte bytes and the partition summary (guard: the step-graph check)."""
    # executorch only when lowering: importing the exporters (CLI choices) must not load it
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import (
        EdgeCompileConfig,
        ExecutorchBackendConfig,
        to_edge_transform_and_lower,
    )
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    with torch.no_grad():
        ep = torch.export.export(module, args, strict=False)
    bad = position_dependent_nodes(ep) if guard else []  # the same guard as the step module's own export
    if bad:
        raise ExportError(f"the step program has position-dependent nodes: {', '.join(bad[:8])}")
    edge = to_edge_transform_and_lower(
        # The generic partitioner also takes the dynamically quantized linears; putting ExecuTorch's
        # XnnpackDynamicallyQuantizedPartitioner first (as its llama flow does) cut the demo step into 50
        # partitions (one per linear), the generic one alone gives a single partition.
        ep, partitioner=[XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False), constant_methods=methods)
    info = get_delegation_info(edge.exported_program().graph_module)
    outside = {k: v.non_delegated for k, v in info.delegation_by_operator.items() if v.non_delegated}
    summary = {"partitions": info.num_delegated_subgraphs, "delegated_nodes": info.num_delegated_nodes,
               "non_delegated_nodes": info.num_non_delegated_nodes, "outside_ops": outside}
    log(f"  XNNPACK: {summary['partitions']} partition(s), {summary['delegated_nodes']} nodes delegated, "
        f"outside: {outside or 'nothing'}")
    passes = [InitializedMutableBufferPass(["state_"])] if mutable else []
    planning = (_state_in_place_planning() if mutable else MemoryPlanningPass)(alloc_graph_input=False)
    et = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, do_quant_fusion_and_const_prop=True, passes=passes,
        memory_planning_pass=planning))
    if mutable:
        summary["state_in_place"] = len(planning.in_place)
        log(f"  state written in place by the partition: {len(planning.in_place)} buffer(s)")
    return et.buffer, summary


def _state_in_place_planning():
    """A MemoryPlanningPass that has the delegate write each new state straight into its mutable buffer.

    torch.export turns `buffer.copy_(present)` into a write-back: the partition writes `present` to a
    planned tensor, then a `copy_` kernel outside the partition copies it into the buffer — on `small`
    2 MB read twice and written once per layer per token, 10 % of a token in ETDump. Here, after the usual
    planning, each write-back whose source is a partition output is dropped and that output is placed at
    the buffer's own offset. That is safe because inside the partition the old state is read (S·γ) before
    the new one is written (the final add), and nothing outside reads the old state after the call; the
    export gate and tests/test_executorch.py check the result token by token against eager."""
    from executorch.exir.passes import MemoryPlanningPass

    class StateInPlace(MemoryPlanningPass):
        in_place: list[str] = []  # the buffers now written by the partition itself

        def run(self, graph_module, graph_signature=None):
            result = super().run(graph_module, graph_signature)
            self.in_place = []
            for node in list(graph_module.graph.nodes):
                if node.op != "call_function" or node.target is not torch.ops.aten.copy_.default:
                    continue
                buffer, src = node.args[0], node.args[1]
                if not (buffer.op == "placeholder" and src.op == "call_function" and len(src.users) == 1
                        and "getitem" in str(src.target) and "executorch_call_delegate" in str(src.args[0].target)):
                    continue
                dst_spec, src_spec = buffer.meta["spec"], src.meta["spec"]
                if (dst_spec.shape, dst_spec.dtype) != (src_spec.shape, src_spec.dtype):
                    continue
                src_spec.mem_id, src_spec.mem_offset = dst_spec.mem_id, dst_spec.mem_offset
                node.replace_all_uses_with(src)
                graph_module.graph.erase_node(node)
                self.in_place.append(str(buffer.target))
            graph_module.recompile()
            return result

    return StateInPlace


@register_target("executorch", embedding_int8_blocks=True, flavor=PTE_FLAVORS)
def export_executorch(weights: ModelWeights, qc: QuantConfig, plan: QuantPlan, out: Path,
                      tokenizer: str | None = None, log=lambda s: None, flavor: str = "runner",
                      max_context: int = DEFAULT_MAX_CONTEXT) -> list[str]:
    """Write model.pte (+ delegation.json) into `out` from a checkpoint read layer by layer; returns the file
    names. Each layer is quantized as soon as it is read, so the fp32 model never exists whole (1.3B: one
    fp32 layer, not 5.3 GB, beside the quantized rest)."""
    def build() -> RetNetStep:
        def layer(i: int, module: nn.Module) -> nn.Module:
            log(f"  layer {i + 1}/{weights.cfg.n_layers}: read and quantized ({qc.scheme.value})")
            quantize_modules(module, plan, prefix=f"layers.{i}.")
            return module

        step = build_step(weights, layer)
        quantize_modules(step, plan, skip="layers.")  # the embedding and the head (the layers are done)
        return step

    return export_program(build, qc, plan, out, log, flavor, max_context)


def export_program(build, qc: QuantConfig, plan: QuantPlan, out: Path, log, flavor: str, max_context: int) -> list[str]:
    """Lower the step `build()` returns (quantized) to the flavour's program and write it (+ delegation.json)."""
    if flavor not in PTE_FLAVORS:
        raise ExportError(f"unknown ExecuTorch flavor {flavor!r}; expected one of {', '.join(PTE_FLAVORS)}")
    if plan.fallbacks:
        log(f"  {len(plan.fallbacks)} linears have in_features % {plan.group_size} != 0: 8da8w for those "
            f"({plan.fallbacks[0]}, ...)")
    with warnings.catch_warnings(), deferred_interrupts(log) as interrupts:
        warnings.simplefilter("ignore")
        for name in ("torchao", "executorch", "torch._export"):
            logging.getLogger(name).setLevel(logging.ERROR)
        q = build()
        interrupts.check()
        log(f"  lowering {flavor} program to XNNPACK ({qc.scheme.value}) ...")
        try:
            if flavor == "runner":
                module, args = RunnerProgram(q), (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
            else:
                module, args = q, (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long),
                                   *q.init_state(1))
            buffer, summary = lower(module, args, constant_methods(q, max_context), flavor == "runner", log)
        except ExportError:
            raise
        except Exception as exc:  # torch.export / lowering raise many types; one clear message
            raise ExportError(f"ExecuTorch lowering failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        interrupts.check()  # an interrupt during lowering: before anything is written
    (out / PTE_FILE).write_bytes(buffer)
    (out / DELEGATION_FILE).write_text(json.dumps({"flavor": flavor, **summary, "config": q.cfg.to_dict(),
                                                   "constant_methods": constant_methods(q, max_context)}, indent=2))
    return [PTE_FILE]
