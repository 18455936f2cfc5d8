"""Where two computations of the same model part ways: per-layer recurrent-state differences at chosen
positions, for an artifact against eager PyTorch (`verify DIR`) and across the source model's three forms
(`verify MODEL --forms`).

Logit parity says *that* an artifact or a form disagrees; the per-layer table says *where*: the first
layer (and position) whose state moves away shows whether a kernel, a quantized projection or the state
hand-off is at fault. Values are relative: max |ΔS| / max |S_reference| per layer and position.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..contract import StepSession

# relative ΔS above which a layer counts as "diverged" in the summary line, per weight precision: the demo's
# healthy artifacts peak at 4e-6 (fp32), 3.6e-2 (int8) and 5.9e-1 (int4, position 1: one outer product of
# quantized k and v); a lost or zeroed state reads 1.0
DIVERGES_AT = {"fp32": 1e-4, "int8": 0.1, "int4": 0.8}
FORMS_TOLERANCE = 1e-3  # max relative logit difference between two fp32 forms before `--forms` fails


def default_positions(steps: int) -> list[int]:
    """Powers of two up to `steps`, and `steps` itself: early positions show a wrong start, late ones drift."""
    ps, p = [], 1
    while p < steps:
        ps.append(p)
        p *= 4
    return ps + [steps]


@dataclass
class LayerTable:
    """rel[layer][i]: relative difference of `what` in that layer after positions[i] tokens."""

    what: str
    positions: list[int]
    rel: list[list[float]] = field(default_factory=list)
    threshold: float = DIVERGES_AT["fp32"]

    def first_divergence(self) -> tuple[int, int] | None:
        """(layer, position) of the earliest position, then lowest layer, past the threshold."""
        for i, p in enumerate(self.positions):
            for layer, row in enumerate(self.rel):
                if row[i] > self.threshold:
                    return layer, p
        return None

    def to_dict(self) -> dict:
        first = self.first_divergence()
        return {"what": self.what, "positions": self.positions,
                "relative_difference": [[float(f"{v:.3e}") for v in row] for row in self.rel],
                "first_divergence": None if first is None else {"layer": first[0], "position": first[1]},
                "threshold": self.threshold}

    def render(self) -> str:
        head = f"    {self.what}: max |Δ| / max |ref| per layer after N tokens"
        cols = "    layer " + "".join(f"{p:>10}" for p in self.positions)
        rows = [f"    {layer:>5} " + "".join(f"{v:>10.1e}" for v in row) for layer, row in enumerate(self.rel)]
        first = self.first_divergence()
        tail = (f"    no layer differs by more than {self.threshold:.0e}" if first is None else
                f"    divergence starts at layer {first[0]} by position {first[1]} (> {self.threshold:.0e})")
        return "\n".join([head, cols, *rows, tail])


def relative_difference(ref, got) -> float:
    """max |got - ref| / max |ref| (the difference itself when ref is all zeros); NaN propagates."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ref - got).max())
    return diff / scale if scale > 0 else diff


def state_divergence(reference, candidate: StepSession, ids: np.ndarray,
                     positions: list[int], precision: str = "fp32") -> LayerTable | None:
    """Per-layer ΔS of the candidate's step loop over ids [1, T] from a zero state, after each chosen position,
    against the reference's states there (`states_at`: a layer-streamed reference or a wrapped session).

    None when the candidate keeps its state inside the program (ExecuTorch's runner flavour): there is no
    state to read, only logits."""
    if candidate.state_in_program:
        return None
    table = LayerTable(f"recurrent state S vs eager fp32 (flagged above {DIVERGES_AT[precision]:.0e} for {precision})",
                       positions, [[] for _ in range(candidate.cfg.n_layers)], DIVERGES_AT[precision])
    want = reference.states_at(ids, positions)
    s_got = candidate.init_state(1)
    for t in range(max(positions)):
        _, s_got = candidate.run_step(ids[:, t : t + 1], np.full((1, 1), t, dtype=np.int64), s_got)
        if t + 1 in positions:
            for layer, (a, b) in enumerate(zip(want[t + 1], s_got)):
                table.rel[layer].append(relative_difference(a, b))
    return table


def forms_divergence(model, ids: np.ndarray, positions: list[int], chunk_size: int = 16) -> dict:
    """The source model's parallel, chunkwise and recurrent forms on ids [1, T], layer by layer.

    The recurrent form is the reference. States: chunkwise (the state it hands to the next chunk) vs the
    recurrent state after the same tokens. Retention outputs per layer at each chosen position: parallel
    vs recurrent and chunkwise vs recurrent (the parallel form keeps no state to compare)."""
    import torch

    from ..core.retention import ChunkCore, ParallelCore, StepCore

    x = torch.from_numpy(ids)
    L, T = model.cfg.n_layers, max(positions)
    x = x[:, :T]

    class Recording:
        """Wraps a retention core and keeps each layer's output o [T, H, Dv] in call order."""

        def __init__(self, core):
            self.core, self.outputs = core, []

        def __call__(self, q, k, v, state):
            o, state = self.core(q, k, v, state)
            self.outputs.append(o[0].detach())
            return o, state

    with torch.no_grad():
        positions_t = torch.arange(T)
        par = Recording(ParallelCore(model.log_gamma, model.cfg.normalize))
        par_logits, _ = model.run(x, positions_t, par, [None] * L)
        chk = Recording(ChunkCore(model.log_gamma, positions_t, model.cfg.normalize, chunk_size))
        chk_logits, _ = model.run(x, positions_t, chk, model.init_state(1))
        gamma = model.log_gamma.exp().view(1, -1, 1, 1)
        state, rec_logits, rec_states = model.init_state(1), [], {}
        rec = Recording(None)
        for t in range(T):
            pos = torch.full((1, 1), t, dtype=torch.long)
            rec.core = StepCore(gamma, model.log_gamma, pos, model.cfg.normalize)
            logits, state = model.run(x[:, t : t + 1], pos, rec, state)
            rec_logits.append(logits)
            if t + 1 in positions:
                rec_states[t + 1] = [s.clone() for s in state]
        rec_logits = torch.cat(rec_logits, 1)
        chunk_states = {p: model.forward_chunkwise(x[:, :p], chunk_size, return_state=True)[1] for p in positions}

    ref_o = [torch.cat(rec.outputs[layer::L], 0) for layer in range(L)]  # the step calls, L x [T, H, Dv]
    tables = []
    for name, outs in (("retention output, parallel vs recurrent", par.outputs),
                       ("retention output, chunkwise vs recurrent", chk.outputs)):
        t = LayerTable(name, positions)
        t.rel = [[relative_difference(ref_o[layer][p - 1], outs[layer][p - 1]) for p in positions] for layer in range(L)]
        tables.append(t)
    st = LayerTable(f"recurrent state S, chunkwise (chunk {chunk_size}) vs recurrent", positions)
    st.rel = [[relative_difference(rec_states[p][layer], chunk_states[p][layer]) for p in positions]
              for layer in range(L)]
    tables.append(st)
    ref = rec_logits.numpy()
    logits = {"parallel vs recurrent": relative_difference(ref, par_logits),
              "chunkwise vs recurrent": relative_difference(ref, chk_logits)}
    return {"tokens": T, "chunk_size": chunk_size, "logits_max_rel": logits, "tables": tables,
            "passed": all(v <= FORMS_TOLERANCE for v in logits.values()), "tolerance": FORMS_TOLERANCE}
