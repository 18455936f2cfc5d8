"""onnxruntime runtime: model_fused.onnx (model.onnx where it is missing or unsupported) for decode,
prefill.onnx (opened on first use, droppable) for prompts.

`OnnxSession` is the functional view (numpy state in, numpy state out) the validator compares;
`BoundDecoder` is what a Runner decodes with: the state lives in numpy buffers that onnxruntime reads and
writes through IOBinding (on the fused graph in place, else past from one set and present into the other,
then swap), so a token costs no state allocation or copy."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.io_utils import release_freed_memory  # noqa: F401  (re-exported: runners call it)
from ..contract import (
    FUSED_STATE_OP,
    GENAI_CONV_SHAPE,
    INPUT_IDS,
    LOGITS,
    LOGITS_TO_KEEP,
    MANIFEST_FILE,
    ONNX_PREFILL_FILE,
    ONNX_PREFILL_INT8_FILE,
    ONNX_PREFILL_INT8_TABLE,
    ONNX_STEP_FILE,
    ONNX_STEP_FUSED_FILE,
    POSITION_IDS,
    TARGET_FLAVORS,
    SessionDefaults,
    flavor_names,
)
from ..contract.manifest import Manifest
from ..core.config import RetNetConfig
from ..errors import ArtifactError
from .options import PROMPT_WEIGHT_CHOICES, RuntimeOptions, check_prompt_weights


def session_options(threads: int | None = None, arena: bool = True, spin: bool = True):
    """The one onnxruntime configuration every session of ours uses (runner, baseline, profiler).

    arena=False frees activations after each run instead of keeping them in onnxruntime's CPU arena: the
    prefill graph's chunk activations (hundreds of MB on a 270M model) would otherwise stay resident
    through the whole decode; its speed is the same (measured on `small`).
    """
    import onnxruntime as ort  # here, not at the top: registering the runtime must not load the engine

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    # worker threads spin between ops unless asked not to (`RuntimeOptions.spin` says why)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = arena
    return so


def step_graph_for(directory: Path, choice: str) -> str:
    """model_fused.onnx where the artifact has it, else model.onnx (`choice` fused | chain forces one).

    Measured on `small` (benchmarks/results/notes.md): with the state updated in place (`BoundDecoder`),
    the fused graph decodes int8 in 22.2 ms at 1 thread (24.6 with two buffers) and 12.3 ms at 2, where
    the MatMul/Mul/Add chain took 15.8 (int4: 20.8 vs 23.0, 11.1 vs 14.4). On a 16-core host it was
    faster at 1 to 16 threads (16: 6.8 vs 9.5 ms): its kernel splits (sequence, head) pairs over threads,
    so its update stops scaling at n_heads threads, but in place it stays ahead of the chain's five
    passes over S. So the thread count does not decide; the chain stays for `--step-graph chain` and for
    an onnxruntime without the kernel."""
    fused = choice in ("fused", "auto")
    return ONNX_STEP_FUSED_FILE if fused and (Path(directory) / ONNX_STEP_FUSED_FILE).is_file() else ONNX_STEP_FILE


# `generate` (one prompt, the graph freed after it) derives int8 prompt weights from this many prompt tokens on:
# opening the derived graph costs ~2 s more on `small` (import onnx, derive, pack) and saves ~4 ms a token
ONE_SHOT_DERIVE_TOKENS = 1024

# prompt tokens per prefill call: 128 beat 256 and 512 on `small` (int8: 1,871 / 2,032 / 2,493 ms to the first
# token of a 512-token prompt at 1 thread; int4 at 2 threads 1,703 / 1,842 / 1,913; int4 at 1 thread even),
# benchmarks/results/prompt_levers_amd_epyc.json: the chunk's activations stay in cache
PREFILL_CHUNK = 128


class OnnxSession(SessionDefaults):
    """Batched, functional access to an ONNX artifact (numpy in/out); the validator's candidate.

    Two flavours: `standard` (model.onnx / model_fused.onnx static step + prefill.onnx chunk graph,
    `past.{i}.recurrent`) and `genai` (one model.onnx for any length with onnxruntime-genai's names and
    dummy conv states); here both are the same calls. The flavour is the manifest's (or given): a
    genai_config.json lying in a standard artifact changes nothing.
    """

    batch_sizes = (1, 3)

    def __init__(self, directory: Path, threads: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 profile_prefix: str | None = None, step_graph: str = "auto", spin: bool = True,
                 flavor: str | None = None, prompt_weights: str = "auto"):
        import onnxruntime as ort  # here, not at the top: registering the runtime must not load the engine

        self.directory, self.prefill_chunk = Path(directory), prefill_chunk
        self._threads, self._spin, self._ort = threads, spin, ort
        self._profile_prefix = profile_prefix  # onnxruntime profiling into files of this prefix (`ort_profile`)
        self.flavor = flavor or _manifest_flavor(self.directory)
        self.step_file = step_graph_for(self.directory, step_graph)
        check_prompt_weights(prompt_weights)
        self.prompt_weights = prompt_weights  # auto: int8 derived from int4 codes at load (`onnx_int8`); stored
        self.derived_prompt: PromptGraphInfo | None = None  # what the open prompt graph derived, if anything
        self.prompt_note = ""  # why auto kept the stored prompt weights, where memory decided it
        self._step = self._open_step()
        self._prefill = self._step if self.flavor == "genai" else None  # genai: one graph, one session
        self._keeps: bool | None = None  # the prompt graph takes logits_to_keep (known once it is open)
        # a prompt run on a session that also decodes hands its prompt-sized activations back afterwards
        self.prompt_run_options = ort.RunOptions()
        if self.flavor == "genai":
            self.prompt_run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        meta = self.step_session.get_modelmeta().custom_metadata_map
        try:
            self.cfg = RetNetConfig.from_dict(json.loads(meta["retnet_edge.config"]))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{directory}/{ONNX_STEP_FILE} lacks retnet_edge.config metadata ({exc})") from exc
        self.metadata = dict(meta)
        self.names = flavor_names(self.flavor, self.cfg.n_layers)
        self.outputs = [LOGITS, *self.names["present_recurrent"]]

    @property
    def step_graph_variants(self) -> tuple[str, ...]:
        """The step graphs besides the one in use that a runner may pick: the gate checks each."""
        present = [f for f in (ONNX_STEP_FILE, ONNX_STEP_FUSED_FILE) if (self.directory / f).is_file()]
        return tuple(f for f in present if f != self.step_file) if self.flavor == "standard" else ()

    def use_step_graph(self, name: str) -> str:
        """Decode with step graph `name` from the next step on (the gate's check of each variant); returns
        the one it replaces."""
        previous, self.step_file, self._step = self.step_file, name, None
        release_freed_memory()
        return previous

    @property
    def prompt_graph_variants(self) -> tuple[str, ...]:
        """The prompt weights besides those in use that a runner may pick: the gate checks each. An int4
        artifact with prefill_int8.onnx runs int8 weights derived at load (auto) or its stored int4 ones."""
        if self.flavor != "standard" or not self._has_int8_prompt():
            return ()
        return tuple(c for c in PROMPT_WEIGHT_CHOICES if c != self.prompt_weights)

    def _has_int8_prompt(self) -> bool:
        return (self.directory / ONNX_PREFILL_INT8_FILE).is_file() and (self.directory / ONNX_PREFILL_INT8_TABLE).is_file()

    def unchecked_files(self) -> tuple[str, ...]:
        return (ONNX_PREFILL_INT8_FILE, ONNX_PREFILL_INT8_TABLE) if self.prompt_note else ()

    def unchecked_reason(self) -> str:
        return self.prompt_note

    def use_prompt_graph(self, name: str) -> str:
        """Prompt with weights `name` (a PROMPT_WEIGHT_CHOICES value) from the next prompt on; returns the
        choice it replaces."""
        check_prompt_weights(name)
        previous, self.prompt_weights = self.prompt_weights, name
        if self._prefill is not self._step:
            self._prefill = None
        release_freed_memory()
        return previous

    def _open_step(self):
        try:
            return self._open(self.step_file)
        except ArtifactError as exc:
            if self.step_file != ONNX_STEP_FUSED_FILE or not (FUSED_STATE_OP[1] in str(exc) or "opset" in str(exc).lower()):
                raise
            # an onnxruntime without the LinearAttention kernel (< 1.25 for the contrib op, < 1.32 for opset 27's):
            # the chain graph
            self.step_file = ONNX_STEP_FILE
            return self._open(self.step_file)

    def _open(self, name: str, arena: bool = True, files: dict | None = None, hint: str = ""):
        """A session of graph `name`; `files`: the contents of its external files, handed over in memory."""
        path = self.directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} not found")
        try:
            so = session_options(self._threads, arena, self._spin)
            if self._profile_prefix:
                so.enable_profiling, so.profile_file_prefix = True, self._profile_prefix
            if files:
                so.add_external_initializers_from_files_in_memory(list(files), list(files.values()),
                                                                  [a.nbytes for a in files.values()])
            return self._ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(f"{path} could not be loaded by onnxruntime ({exc}){hint}") from exc

    @property
    def step_session(self):
        if self._step is None:
            self._step = self._open_step()
            if self.flavor == "genai":
                self._prefill = self._step
        return self._step

    def _open_prompt(self, derive: bool):
        """prefill.onnx; with derive and an int4 artifact's prefill_int8.onnx + table (which the export gate
        checked), that graph over int8 weights derived from the int4 codes now (`onnx_int8`). The stored graph
        where the artifact has no int8 prompt graph (not int4, or exported before it) or the derived weights
        would not fit in memory (`prompt_note` says so)."""
        self.derived_prompt, self.prompt_note = None, ""
        if not (derive and self._has_int8_prompt()):
            return self._open(ONNX_PREFILL_FILE, arena=False)
        from ..base.io_utils import available_memory_bytes
        from .onnx_int8 import DERIVED_FILE, NoRoomToDerive, check_room, check_table, derive_weights

        t0 = time.perf_counter()
        try:
            table = json.loads((self.directory / ONNX_PREFILL_INT8_TABLE).read_text())
            check_table(table)
            check_room(table, available_memory_bytes())
            files = derive_weights(self.directory, table, self._threads)
        except NoRoomToDerive as exc:
            self.prompt_note = f"prompts use the stored int4 weights: {exc}"
            return self._open(ONNX_PREFILL_FILE, arena=False)
        except ArtifactError:
            raise
        except Exception as exc:  # a malformed table or graph, a short read
            raise ArtifactError(f"{self.directory}: the int8 prompt graph could not be read ({exc}); "
                                "--prompt-weights stored runs the graph as exported") from exc
        session = self._open(ONNX_PREFILL_INT8_FILE, arena=False, files=files,
                             hint="; --prompt-weights stored runs the graph as exported")
        self.derived_prompt = PromptGraphInfo(len(table["linears"]), int(files[DERIVED_FILE].nbytes),
                                              time.perf_counter() - t0)
        del files  # onnxruntime copied what it needs: the derived buffer and the maps go now
        release_freed_memory()
        return session

    @property
    def prefill_session(self):
        if self._prefill is None:
            self.open_prompt()
        return self._prefill

    def open_prompt(self, tokens: int | None = None) -> None:
        """Open the prompt graph if it is not open. prompt_weights auto derives int8 weights unless the caller
        runs one prompt shorter than ONE_SHOT_DERIVE_TOKENS and frees the graph after it (`generate`): deriving
        costs more than it saves there."""
        if self._prefill is not None:
            return
        if self.flavor == "genai":
            self._prefill = self.step_session
            return
        once_short = tokens is not None and tokens < ONE_SHOT_DERIVE_TOKENS
        self._prefill = self._open_prompt(self.prompt_weights == "auto" and not once_short)

    def release(self) -> None:
        """Drop every session and its prepacked weights; the next call reopens what it needs. The gate
        holds one graph's session at a time this way (7B int4: each one is several GB)."""
        self._step = self._prefill = None
        release_freed_memory()

    def drop_prefill(self) -> None:
        """Release the prefill session and its prepacked weight copy: decode-only memory until the next
        prompt (which reopens it, ~0.1 s per 100M parameters). Each session prepacks its own weights
        (onnxruntime's Python API has no shared prepacked-weights container), so this is how the
        decode phase holds one copy. (genai flavour: one session already; nothing to drop.)"""
        if self._prefill is not None and self._prefill is not self.step_session:
            self._prefill = None
            release_freed_memory()

    def decoder(self) -> BoundDecoder:
        return BoundDecoder(self)

    def init_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, *self.cfg.state_shape), np.float32) for _ in range(self.cfg.n_layers)]

    def keep_last(self, last_only: bool) -> dict:
        """The prompt graph's `logits_to_keep` feed: [1] when only the last position's logits are wanted and
        the graph takes the input (exporters/onnx/logits.py; older artifacts and genai compute them all)."""
        if not last_only:
            return {}
        if self._keeps is None:
            sess = self.prefill_session  # an input with a default is an "overridable initializer" to onnxruntime
            self._keeps = LOGITS_TO_KEEP in {i.name for i in [*sess.get_inputs(), *sess.get_overridable_initializers()]}
        return {LOGITS_TO_KEEP: np.ones(1, np.int64)} if self._keeps else {}

    def _feed(self, ids, pos, state) -> dict:
        conv = np.zeros((ids.shape[0], *GENAI_CONV_SHAPE), np.float32)
        return {INPUT_IDS: ids, POSITION_IDS: pos, **dict(zip(self.names["past_recurrent"], state)),
                **{name: conv for name in self.names["past_conv"]}}

    def run_step(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray]):
        logits, *state = self.step_session.run(self.outputs, self._feed(ids, pos, state))
        return logits, state

    def run_prefill(self, ids: np.ndarray, pos: np.ndarray, state: list[np.ndarray], last_only: bool = False):
        outs = []
        for c in range(0, ids.shape[1], self.prefill_chunk):
            sl = slice(c, c + self.prefill_chunk)
            logits, *state = self.prefill_session.run(
                self.outputs, {**self._feed(ids[:, sl], pos[:, sl], state), **self.keep_last(last_only)},
                self.prompt_run_options)
            outs = [logits[:, -1:]] if last_only else [*outs, logits]
        return np.concatenate(outs, axis=1), state


class BoundDecoder:
    """Batch-1 decoding with the recurrent state in place: two buffer sets, IOBinding, no per-token copies.

    Buffers are numpy arrays that onnxruntime reads and writes through zero-copy OrtValues; only the token,
    the position and the logits row cross the boundary. On model_fused.onnx a step binds past and present
    of a layer to the *same* buffer (`in_place`): each present is written by the LinearAttention node that
    alone reads that past, and onnxruntime's kernel updates the state where it lies when the two coincide
    (it copies past into present first otherwise). That is one read and one write of S per token instead
    of a copy plus the update: on `small` 12 layers' updates took 1.84 vs 3.64 ms at 1 thread and 1.28 vs
    3.58 at 2 (benchmarks/results/notes.md). model.onnx (the Mul/Add/MatMul chain) and prompt chunks bind
    past <- set[cur], present -> set[1 - cur] and flip `cur`: there a node reads past after another one
    has started writing present. In place, the second set exists only while a prompt runs, so decoding
    holds one state (a 7B model's is hundreds of MB).
    """

    def __init__(self, session: OnnxSession):
        cfg = session.cfg
        self.session, self.n = session, cfg.n_layers
        self.conv = [np.zeros((1, *GENAI_CONV_SHAPE), np.float32) for _ in range(2)]  # genai's dummies
        self.cur = 0
        self.ids, self.pos = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
        self.logits = np.zeros((1, 1, cfg.vocab_size), np.float32)
        self.graph = session.step_session  # the session the step bindings belong to
        self.in_place = session.flavor == "standard" and session.step_file == ONNX_STEP_FUSED_FILE
        self.buffers = [self._zeros(), None if self.in_place else self._zeros()]
        self._steps = [None, None]  # the step binding reading buffers[src], built on first use

    def _zeros(self) -> list[np.ndarray]:
        return [np.zeros((1, *self.session.cfg.state_shape), np.float32) for _ in range(self.n)]

    def _bind(self, sess, src: int, ids: np.ndarray, pos: np.ndarray, logits: np.ndarray | None,
              in_place: bool = False):
        """An IOBinding reading the state from buffers[src] and writing it to buffers[1 - src] (in_place:
        back to buffers[src])."""
        as_ort, names = self.session._ort.OrtValue.ortvalue_from_numpy, self.session.names
        io = sess.io_binding()
        io.bind_ortvalue_input(INPUT_IDS, as_ort(ids))
        io.bind_ortvalue_input(POSITION_IDS, as_ort(pos))
        if logits is None:
            io.bind_output(LOGITS, "cpu")  # a prompt chunk: onnxruntime allocates [1, T, V]
        else:
            io.bind_ortvalue_output(LOGITS, as_ort(logits))
        for i in range(self.n):
            io.bind_ortvalue_input(names["past_recurrent"][i], as_ort(self.buffers[src][i]))
            io.bind_ortvalue_output(names["present_recurrent"][i], as_ort(self.buffers[src if in_place else 1 - src][i]))
        for past, present in zip(names["past_conv"], names["present_conv"]):
            io.bind_ortvalue_input(past, as_ort(self.conv[0]))
            io.bind_ortvalue_output(present, as_ort(self.conv[1]))
        return io

    def reset(self) -> None:
        for buf in self.buffers[self.cur]:
            buf.fill(0.0)

    def step(self, token: int, position: int) -> np.ndarray:
        """logits [V] (a copy: the buffer is reused by the next step)."""
        self.ids[0, 0], self.pos[0, 0] = token, position
        if self._steps[self.cur] is None:
            self._steps[self.cur] = self._bind(self.graph, self.cur, self.ids, self.pos, self.logits, self.in_place)
        self.graph.run_with_iobinding(self._steps[self.cur])
        if not self.in_place:
            self.cur = 1 - self.cur
        return self.logits[0, -1].copy()

    def prefill(self, ids: np.ndarray, pos: np.ndarray, last_only: bool) -> np.ndarray:
        """ids, pos [1, T]: the prefill graph chunk by chunk, the state bound in place; logits [1, T|1, V]."""
        sess, outs = self.session.prefill_session, []
        if self.buffers[1 - self.cur] is None:
            self.buffers[1 - self.cur] = self._zeros()  # chunks read one set and write the other
        for c in range(0, ids.shape[1], self.session.prefill_chunk):
            sl = slice(c, c + self.session.prefill_chunk)
            io = self._bind(sess, self.cur, np.ascontiguousarray(ids[:, sl]), np.ascontiguousarray(pos[:, sl]), None)
            for name, value in self.session.keep_last(last_only).items():  # (bind_cpu_input refuses an input
                io.bind_ortvalue_input(name, self.session._ort.OrtValue.ortvalue_from_numpy(value))  # with a default)
            sess.run_with_iobinding(io, self.session.prompt_run_options)
            self.cur = 1 - self.cur
            logits = io.get_outputs()[0].numpy()
            outs = [logits[:, -1:].copy()] if last_only else [*outs, logits]
        if self.in_place:  # the state is in buffers[cur]; the other set (and the binding onto it) goes
            self.buffers[1 - self.cur] = self._steps[1 - self.cur] = None
        if self.session.flavor == "genai":
            release_freed_memory()  # the arena shrank; let the heap hand the pages back too
        return np.concatenate(outs, axis=1)

    def get_state(self) -> list[np.ndarray]:
        return [b.copy() for b in self.buffers[self.cur]]

    def set_state(self, state: list[np.ndarray]) -> None:
        for buf, s in zip(self.buffers[self.cur], state, strict=True):
            buf[...] = s


@dataclass(frozen=True)
class PromptGraphInfo:
    """What opening the prompt graph with derived int8 weights did (bench and `--verbose` report it)."""

    linears: int  # 4-bit linears moved to the int8 GEMM
    weight_bytes: int  # the int8 weights and scales derived
    seconds: float  # deriving them and opening the session


def _manifest_flavor(directory: Path) -> str:
    """The flavour an artifact's manifest records (standard where it has none: a bare graph directory)."""
    if not (directory / MANIFEST_FILE).is_file():
        return TARGET_FLAVORS["onnx"][0]
    return Manifest.load(directory, check_hashes=False).flavor or TARGET_FLAVORS["onnx"][0]


def open_onnx(directory: Path, options: RuntimeOptions) -> OnnxSession:
    return OnnxSession(directory, options.threads, step_graph=options.step_graph, spin=options.spin,
                       flavor=options.flavor, prompt_weights=options.prompt_weights)
