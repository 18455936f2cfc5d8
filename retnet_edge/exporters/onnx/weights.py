"""weights.bin and graph metadata: each distinct weight stored once, in the order the graphs first read it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

from ... import __version__
from ...contract import ONNX_WEIGHTS_FILE, STATE_LAYOUT
from ...contract.quant import QuantConfig
from ...core.config import RetNetConfig

SHARE_MIN_BYTES = 1024  # smaller initializers stay inline


def set_metadata(model: onnx.ModelProto, cfg: RetNetConfig, qc: QuantConfig, graph: str, tokenizer: str | None) -> None:
    """The artifact's facts in every graph's metadata: a runtime reads the config and quant from the graph."""
    props = {"retnet_edge.version": __version__, "retnet_edge.graph": graph, "retnet_edge.config": cfg.to_json(),
             "retnet_edge.quant": json.dumps(qc.to_dict()), "retnet_edge.state_layout": STATE_LAYOUT,
             "bos_id": str(cfg.bos_id), "eos_id": str(cfg.eos_id), "tokenizer": tokenizer or ""}
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name, model.producer_version = "retnet-edge", __version__


class SharedWeights:
    """weights.bin, written as initializers arrive: each distinct one (by content) stored once, 64-byte
    aligned, in the order the graphs first use them; the TensorProto then points at it (external data).

    The step and prefill graphs hold the same (quantized) weights; without sharing an artifact would carry
    them twice. Content, not names, decides, so graph-specific names do not matter, and the order of first
    use makes the file the same whether a graph was traced whole or stamped out layer by layer
    (`stamp.py`). onnxruntime memory-maps the file.
    """

    def __init__(self, out: Path):
        self.file = open(out / ONNX_WEIGHTS_FILE, "wb")
        self.offsets: dict[str, tuple[int, int]] = {}

    def add(self, t: onnx.TensorProto) -> onnx.TensorProto:
        """Write t's data (once per content) and point t at it; returns a copy of t without the data."""
        if not t.HasField("raw_data") or len(t.raw_data) < SHARE_MIN_BYTES:
            return t  # small initializers stay inline
        key = hashlib.sha256(t.raw_data).hexdigest()
        if key not in self.offsets:
            self.file.write(b"\0" * (-self.file.tell() % 64))  # 64-byte alignment for mmap'ed reads
            self.offsets[key] = (self.file.tell(), len(t.raw_data))
            self.file.write(t.raw_data)
        offset, length = self.offsets[key]
        set_external_data(t, location=ONNX_WEIGHTS_FILE, offset=offset, length=length)
        t.ClearField("raw_data")
        slim = onnx.TensorProto()  # a fresh message: a cleared field keeps its memory until the message goes
        slim.CopyFrom(t)
        return slim

    def close(self) -> None:
        self.file.close()


def first_use_order(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The graph's initializers in the order its nodes first read them (unread ones last)."""
    by_name = {t.name: t for t in graph.initializer}
    order: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name in by_name:
                order.setdefault(name)
    return [by_name[n] for n in [*order, *(n for n in by_name if n not in order)]]


def save_shared(models: dict[str, onnx.ModelProto], out: Path) -> None:
    """Save whole graphs with one shared external weights file (`SharedWeights`, first-use order)."""
    weights = SharedWeights(out)
    try:
        for model in models.values():
            for t in first_use_order(model.graph):
                weights.add(t)
    finally:
        weights.close()
    for fname, model in models.items():
        onnx.save_model(model, str(out / fname))


