"""The artifact contract: file names, graph I/O names, the state layout, the session protocol (here), and
the typed objects that cross stages: `manifest.Manifest`, `quant.QuantConfig` / `QuantPlan`,
`request.ExportRequest`.

Exporters write it, runtimes read it, `inspect` and the tests check it; this is the only place it is
spelled out (the README's I/O tables describe the same names). Light on purpose: numpy only, so a
runtime can import it without torch. May import: `base`, `core.config`, `errors`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ..base import confine
from ..core.config import RetNetConfig

MANIFEST_FILE = "manifest.json"
# each target's flavours, the default first: the exporters register these choices, the export request
# and the manifest check against them (a manifest is read where no exporter is importable: the base install)
TARGET_FLAVORS = {"onnx": ("standard", "genai"), "executorch": ("runner", "io")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# ONNX: a static step graph and a dynamic-length chunk graph sharing one external weights file
ONNX_STEP_FILE, ONNX_PREFILL_FILE, ONNX_WEIGHTS_FILE = "model.onnx", "prefill.onnx", "weights.bin"
# the same step graph with each layer's state update as one com.microsoft::LinearAttention node: runners decode
# with it (the state updated in place, past and present bound to one buffer); model.onnx is the fallback
ONNX_STEP_FUSED_FILE = "model_fused.onnx"
# an int4 artifact's prompt graph with int8 GEMMs whose weights the runtime derives from the int4 codes when it
# opens it, and the table saying where those codes lie (runtimes/onnx_int8.py); plain onnxruntime runs prefill.onnx
ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE = "prefill_int8.onnx", "prefill_int8.json"
# its op: ai.onnx LinearAttention of opset 27 where the exporting onnxruntime runs it (1.32+), else onnxruntime's
# com.microsoft op of the same signature (1.24.4 lacks its CPU kernel, 1.25.1 has it)
LOGITS_TO_KEEP = "logits_to_keep"  # prefill.onnx: int64 [1], default 0 = every position (exporters/onnx/logits.py)
FUSED_STATE_OP = ("com.microsoft", "LinearAttention")
STANDARD_STATE_OP_OPSET = 27
# ExecuTorch: the program and its XNNPACK partition summary (+ flavour and config)
PTE_FILE, DELEGATION_FILE = "model.pte", "delegation.json"

INPUT_IDS, POSITION_IDS, LOGITS = "input_ids", "position_ids", "logits"
STATE_LAYOUT = ("past.{i}.recurrent / present.{i}.recurrent: float32 [batch, H, d_k, d_v], the unnormalized "
                "S_n = gamma*S_{n-1} + k_n^T v_n of layer i, zeros at the start; d_k in half-split rotary order")


def past_name(i: int) -> str:
    return f"past.{i}.recurrent"


def present_name(i: int) -> str:
    return f"present.{i}.recurrent"


# ONNX genai flavour (`--flavor genai`): ONE graph (model.onnx, any sequence length) with the names
# onnxruntime-genai binds for a fixed-size recurrent layer, and a dummy conv state per layer that its
# runtime requires next to every recurrent state (float32 [batch, 1, 1], passed through by Identity).
GENAI_CONFIG_FILE, GENAI_TOKENIZER_CONFIG_FILE = "genai_config.json", "tokenizer_config.json"
ATTENTION_MASK = "attention_mask"  # fed by onnxruntime-genai, all ones, unused: batch 1 / equal-length prompts
GENAI_NAMES = {"past_recurrent_names": "past_key_values.%d.recurrent_state",
               "present_recurrent_names": "present.%d.recurrent_state",
               "past_conv_names": "past_key_values.%d.conv_state", "present_conv_names": "present.%d.conv_state"}
GENAI_CONV_SHAPE = (1, 1)  # per batch row


def flavor_names(flavor: str, n_layers: int) -> dict[str, list[str]]:
    """Per-layer state names of an ONNX flavour: past, present, and (genai) past_conv, present_conv."""
    if flavor == "genai":
        return {k: [GENAI_NAMES[f"{k}_names"] % i for i in range(n_layers)]
                for k in ("past_recurrent", "present_recurrent", "past_conv", "present_conv")}
    return {"past_recurrent": [past_name(i) for i in range(n_layers)],
            "present_recurrent": [present_name(i) for i in range(n_layers)], "past_conv": [], "present_conv": []}


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """The graphs' input and output names, in order."""
    return ([INPUT_IDS, POSITION_IDS, *map(past_name, range(n_layers))],
            [LOGITS, *map(present_name, range(n_layers))])


def tokenizer_file(directory: Path) -> Path | None:
    """The tokenizer a model or artifact directory carries, if any: a regular file of bounded size inside the
    directory (a symlink out of it, or a FIFO, is refused by name rather than copied or skipped)."""
    for name in TOKENIZER_FILES:
        p = Path(directory) / name
        if os.path.lexists(p):
            return confine.regular_file(confine.inside(directory, p, "tokenizer"), "tokenizer",
                                        confine.TOKENIZER_MAX_BYTES)
    return None


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis in float64 (perplexity, KL and top-1 all read logits this way)."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Decoder(Protocol):
    """Batch-1 decoding that owns its state (a session's in-place decoder, or the runner's functional one)."""

    def reset(self) -> None: ...

    def step(self, token: int, position: int) -> np.ndarray: ...

    def prefill(self, ids: np.ndarray, pos: np.ndarray, last_only: bool) -> np.ndarray: ...

    def get_state(self) -> list[np.ndarray]: ...

    def set_state(self, state: list[np.ndarray]) -> None: ...


class StepSession(Protocol):
    """Batched, functional access to a step/prefill pair (numpy in, numpy out): eager or an artifact.

    The validator compares two of these; `Runner` drives one at batch 1. The optional capabilities are
    declared here with what a session without them does (`SessionDefaults` supplies those defaults).
    """

    cfg: RetNetConfig
    batch_sizes: tuple[int, ...]  # the batch sizes it can run (ExecuTorch programs: 1)
    state_in_program: bool  # the program keeps the state inside itself (no state in or out)
    step_graph_variants: tuple[str, ...]  # other step graphs a runner may pick (the gate checks each)
    prompt_graph_variants: tuple[str, ...]  # other prompt weights a runner may pick (the gate checks each)

    def init_state(self, batch_size: int) -> list[np.ndarray]: ...

    def run_step(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """ids, pos [B, 1] int64 -> (logits [B, 1, V], new state)."""

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray],
                    last_only: bool = False) -> tuple[np.ndarray, list]:
        """ids, pos [B, T] int64 -> (logits [B, T, V], new state); with last_only, logits [B, 1, V]: a long
        prompt then holds one chunk's logits at a time, not T x V of them."""

    def decoder(self) -> Decoder | None:
        """A decoder keeping the state in place (ONNX IOBinding), or None: the runner drives run_step."""

    def use_step_graph(self, name: str) -> str:
        """Switch to step graph `name` (one of step_graph_variants); returns the one it replaces."""

    def use_prompt_graph(self, name: str) -> str:
        """Prompt with weights `name` (one of prompt_graph_variants); returns the choice it replaces."""

    def unchecked_files(self) -> tuple[str, ...]:
        """Artifact files the last prompt could not run here (ONNX: the int8 prompt graph when its derived
        weights did not fit in memory): the gate leaves them out of an export and says so in a verify."""

    def unchecked_reason(self) -> str:
        """Why `unchecked_files` could not run."""

    def open_prompt(self, tokens: int | None = None) -> None:
        """Open the prompt graph now (a server or chat before its first request). tokens: the length of the
        one prompt a caller will run before it frees the graph (`generate`), so the session can open the graph
        that is quicker to open and run for that length; None: the graph stays open for many prompts."""

    def drop_prefill(self) -> None:
        """Free the prompt graph until the next prefill (decode-phase memory: one copy of the weights)."""

    def release(self) -> None:
        """Drop and later reopen graphs, so the gate's reference and candidate do not peak together."""


class SessionDefaults:
    """What a session without an optional capability of `StepSession` does: nothing, or the plain path."""

    state_in_program = False
    step_graph_variants: tuple[str, ...] = ()
    prompt_graph_variants: tuple[str, ...] = ()

    def decoder(self) -> Decoder | None:
        return None

    def use_step_graph(self, name: str) -> str:
        raise NotImplementedError(f"{type(self).__name__} has one step graph")

    def use_prompt_graph(self, name: str) -> str:
        raise NotImplementedError(f"{type(self).__name__} has one prompt graph")

    def open_prompt(self, tokens: int | None = None) -> None:
        pass

    def unchecked_files(self) -> tuple[str, ...]:
        return ()

    def unchecked_reason(self) -> str:
        return ""

    def drop_prefill(self) -> None:
        pass

    def release(self) -> None:
        pass
