"""The ONNX Transformer baseline as people deploy it: a Llama graph the way onnxruntime-genai's model builder
emits one for the CPU, and a runner that drives it the way genai's generator does.

Per layer: SimplifiedLayerNormalization -> q/k/v MatMuls -> com.microsoft GroupQueryAttention (rotary inside,
`do_rotary`; the KV cache in ONE preallocated buffer per layer that is both past and present, BNSH
[1, H, max_len, 64] fp32, written in place at the position `seqlens_k` names) -> o MatMul -> residual ->
norm -> GLU FFN -> residual; final norm; the LM head on the last position only (what a decode needs, and
what llama.cpp computes). Weights are the same random TransformerKV (`baseline._random_baseline`), named
like the RetNet exporter's nodes so the same QuantPlan quantizes them (MatMulNBits int4 / the int8 GEMM).
No concatenation, no cache copy per token: the cost per token is the weights plus reading the cache in use.

    input_ids [1, S] int64, seqlens_k [1] int32 (= total - 1), total_sequence_length [] int32,
    past_key.{i} / past_value.{i} [1, H, max_len, 64]  ->  logits [1, 1, V], present_key.{i} / present_value.{i}
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract import ONNX_STEP_FILE
from ..core.config import RetNetConfig
from ..errors import ArtifactError

HEAD_DIM = 64
MAX_POSITIONS = 65_536  # rows of the rotary cos/sin caches (plan.BASELINE_MAX_CONTEXT)


def kv_names(n_layers: int, kind: str) -> list[str]:
    return [f"{kind}_{part}.{i}" for i in range(n_layers) for part in ("key", "value")]


def build_graph(weights: dict[str, np.ndarray], cfg: RetNetConfig, heads: int) -> onnx.ModelProto:
    """The fp32 graph from the baseline's state dict (`layers.{i}.attn.q_proj.weight` [out, in], ...)."""
    L, D, V = cfg.n_layers, cfg.d_model, cfg.vocab_size
    nodes, inits = [], []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], module: str, **attrs) -> str:
        name = f"/model/{module}/{op}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def linear(x: str, module: str) -> str:  # y = x W^T, the weight stored [in, out] as the RetNet exporter does
        w = init(f"{module}.weight.T", weights[f"{module}.weight"].T)
        out = f"/model/{module}/MatMul_out"
        nodes.append(helper.make_node("MatMul", [x, w], [out], name=f"/model/{module}/MatMul"))
        return out

    def norm(x: str, module: str) -> str:
        return node("SimplifiedLayerNormalization", [x, init(f"{module}.weight", weights[f"{module}.weight"])], module,
                    axis=-1, epsilon=cfg.norm_eps)

    inv = 1.0 / cfg.rope_theta ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    angles = np.arange(MAX_POSITIONS, dtype=np.float64)[:, None] * inv[None]  # [P, 32]
    cos, sin = init("cos_cache", np.cos(angles).astype(np.float32)), init("sin_cache", np.sin(angles).astype(np.float32))
    x = node("Gather", [init("embed.weight", weights["embed.weight"]), "input_ids"], "embed")
    for i in range(L):
        p = f"layers.{i}"
        h = norm(x, f"{p}.attn_norm")
        q, k, v = (linear(h, f"{p}.attn.{n}_proj") for n in "qkv")
        out = f"/model/{p}.attn/GroupQueryAttention_out"
        nodes.append(helper.make_node(
            "GroupQueryAttention", [q, k, v, f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length",
                                    cos, sin], [out, f"present_key.{i}", f"present_value.{i}"],
            name=f"/model/{p}.attn/GroupQueryAttention", domain="com.microsoft", num_heads=heads, kv_num_heads=heads,
            do_rotary=1, rotary_interleaved=0, scale=float(HEAD_DIM ** -0.5)))
        x = node("Add", [x, linear(out, f"{p}.attn.o_proj")], p)
        h = norm(x, f"{p}.ffn_norm")
        g = linear(h, f"{p}.ffn.fc1")
        act = node("Mul", [g, node("Sigmoid", [g], f"{p}.ffn")], f"{p}.ffn")  # SiLU
        x = node("Add", [x, linear(node("Mul", [act, linear(h, f"{p}.ffn.gate")], f"{p}.ffn"), f"{p}.ffn.fc2")], p)
    last = node("Slice", [x, init("last.start", np.array([-1], np.int64)), init("last.end", np.array([2**62], np.int64)),
                          init("last.axis", np.array([1], np.int64))], "norm")
    logits = linear(norm(last, "norm"), "lm_head")
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/model/logits/Identity"))
    cache = [1, heads, "max_len", HEAD_DIM]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              *(helper.make_tensor_value_info(n, TensorProto.FLOAT, cache) for n in kv_names(L, "past"))]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, V]),
               *(helper.make_tensor_value_info(n, TensorProto.FLOAT, cache) for n in kv_names(L, "present"))]
    graph = helper.make_graph(nodes, "transformer_kv_gqa", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


class GQARunner:
    """Batch-1 decoding of the baseline as onnxruntime-genai's generator does it on the CPU: each layer's
    cache is one buffer bound as both past and present (IOBinding), so a token moves its id and its
    logits; `position` is the cache in use, and rewinding it (a snapshot) costs nothing."""

    def __init__(self, directory: Path, threads: int | None = None, max_len: int = 4096):
        import onnxruntime as ort

        from ..runtimes.onnxruntime import session_options

        path = Path(directory) / ONNX_STEP_FILE
        if not path.is_file():
            raise ArtifactError(f"{path} not found")
        self._ort = ort
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.cfg = RetNetConfig.from_dict(json.loads(meta["retnet_edge.config"]))
        heads = int(meta["retnet_edge.kv_heads"])
        if max_len > MAX_POSITIONS:
            raise ArtifactError(f"the baseline's rotary cache holds {MAX_POSITIONS:,} positions, not {max_len:,}")
        self.max_len = max_len
        self.cache = [np.zeros((1, heads, max_len, HEAD_DIM), np.float32) for _ in range(2 * self.cfg.n_layers)]
        self.values = [ort.OrtValue.ortvalue_from_numpy(c) for c in self.cache]
        self.position = 0

    def reset(self) -> None:
        self.position = 0  # what lies past the position is never read (seqlens_k bounds attention)

    def _run(self, ids: list[int]) -> np.ndarray:
        total = self.position + len(ids)
        if total > self.max_len:
            raise ArtifactError(f"the baseline's cache holds {self.max_len:,} positions; this needs {total:,}")
        ov = self._ort.OrtValue.ortvalue_from_numpy
        io = self.session.io_binding()
        io.bind_output("logits", "cpu")  # first: get_outputs() lists the outputs in the order they were bound
        io.bind_ortvalue_input("input_ids", ov(np.array([ids], np.int64)))
        io.bind_ortvalue_input("seqlens_k", ov(np.array([total - 1], np.int32)))
        io.bind_ortvalue_input("total_sequence_length", ov(np.array(total, np.int32)))
        for past, present, value in zip(kv_names(self.cfg.n_layers, "past"), kv_names(self.cfg.n_layers, "present"),
                                        self.values):
            io.bind_ortvalue_input(past, value)
            io.bind_ortvalue_output(present, value)  # the same buffer: written in place at the position
        self.session.run_with_iobinding(io)
        self.position = total
        return io.get_outputs()[0].numpy()[0]

    def prefill(self, ids: list[int], all_logits: bool = False, chunk: int = 512) -> np.ndarray:
        """The prompt in chunks; logits of its last position [1, V] (the graph computes no others)."""
        out = None
        for c in range(0, len(ids), chunk):
            out = self._run(ids[c : c + chunk])
        return out

    def step(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def snapshot(self) -> int:
        return self.position

    def restore(self, position: int) -> None:
        self.position = position

    @property
    def state_bytes(self) -> int:
        """The cache in use (what a token's attention reads): K and V of every layer up to the position."""
        return sum(c[:, :, : self.position].nbytes for c in self.cache)
