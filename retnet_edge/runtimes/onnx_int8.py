"""int8 prompt weights derived from an int4 artifact's codes when its prompt graph opens (numpy only: the
runtime opens an exported prefill_int8.onnx with its table without importing onnx, which costs ~1.5 s here).

Why the runtime derives int8 prompt weights: onnxruntime's MatMulNBits (4-bit) runs a 128-row prompt chunk of
`small`'s FFN ([128 x 1024] . [1024 x 2816], 1 thread, AMD EPYC avx2) at 61 GFLOP/s, its int8 GEMM at 151,
and MatMulNBits is 81 % of an int4 prompt's time. `export --prefill-weights int8` stores int8 copies (+70 %
file); this makes them when the prompt graph opens, from the int4 codes the artifact already holds, so the
file stays int4. The prompt then computes with the int4 weights re-rounded to int8 per output channel: the
decode graph's weights, as closely as 7 bits allow.

The graph (prefill_int8.onnx) is prefill.onnx with each 4-bit MatMulNBits replaced by a QGemm over int8
weights declared in DERIVED_FILE, a file never written: `derive_weights` makes its bytes from the table
(prefill_int8.json: where each linear's codes lie in weights.bin, where its int8 weights go) and onnxruntime
gets them with the session options (`onnx_int8_graph` writes both at export; an artifact exported before them
runs its stored prompt graph).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..contract.quant import INT8_QMAX_REDUCED
from ..errors import ArtifactError

WEIGHT_QMAX = INT8_QMAX_REDUCED  # int8 weights use 7 bits: no CPU's int8 kernel saturates
FRACTION_BITS = 8  # the fixed point of `derive_int8`'s ratio s_block / s_row
DERIVED_FILE = "derived-at-load.bin"  # the external file the derived weights are declared in (never written)
ALIGN = 64
TABLE_FORMAT = 1
TILE_ROWS = 128  # output rows derived at a time (`derive_weights`)
# while the session opens, the derived weights exist three times: our buffer, onnxruntime's copy of it, and its
# packed GEMM weights (measured on `small`: peak RSS +660 MB for 205 MB derived)
PEAK_COPIES = 3


class NoRoomToDerive(Exception):
    """Deriving the int8 prompt weights would not fit in the memory available (the message says how much)."""


def derive_int8(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int,
                block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' 4-bit B [N, K / block, block / 2] (two codes a byte, the first in the low nibble), its
    scales [N, K / block] and integer zero points (None: 8; uint8: two a byte) -> (int8 W [N, K], scale [N]).

    W = (q - zp) * s per block; the row's scale s8 is max|W[n]| / 64; each code is round(c * s / s8) with
    c = q - zp and the ratio s / s8 in 16-bit fixed point (8 fraction bits; |c| * ratio <= 64 * 256 fits),
    round half up. Two int16 multiply-adds a byte, 4 ns per weight here, against 12 for the float round trip;
    the rounding differs from float's in < 1 % of weights by one step, and deterministically (the export gate
    runs this same function)."""
    blocks = k // block
    c_lo = (b & 0x0F).astype(np.int16)  # [N, blocks, block / 2]
    c_hi = (b >> 4).astype(np.int16)
    if zero_points is None:
        zp = np.full((n, blocks, 1), 8, np.int16)
    else:
        packed = zero_points.reshape(n, -1)
        zp = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1)[:, :blocks, None].astype(np.int16)
    c_lo -= zp
    c_hi -= zp
    s = scales.reshape(n, blocks).astype(np.float32)
    top = _last_axis_max(np.maximum(np.abs(c_lo), np.abs(c_hi))).astype(np.float32)  # [N, blocks] max |c|
    row = (np.maximum((top * np.abs(s)).max(1), 1e-12) / WEIGHT_QMAX).astype(np.float32)  # [N]
    ratio = np.rint(s / row[:, None] * (1 << FRACTION_BITS)).astype(np.int16)[..., None]  # [N, blocks, 1]
    half = np.int16(1 << (FRACTION_BITS - 1))
    for c in (c_lo, c_hi):
        c *= ratio
        c += half
        c >>= FRACTION_BITS
    q = np.empty((n, blocks, block), np.int8)
    q[..., 0::2], q[..., 1::2] = c_lo, c_hi
    return q.reshape(n, k), row


def _last_axis_max(a: np.ndarray) -> np.ndarray:
    """a.max(-1) by halving: numpy reduces a short last axis (16 codes) row by row, 5x slower than four
    element-wise maxima of its halves."""
    while a.shape[-1] > 1 and a.shape[-1] % 2 == 0:
        half = a.shape[-1] // 2
        a = np.maximum(a[..., :half], a[..., half:])
    return a.max(-1)


def check_room(table: dict, available: int | None) -> None:
    """NoRoomToDerive when PEAK_COPIES of the derived weights exceed `available` bytes (None: not checked)."""
    need = PEAK_COPIES * int(table["bytes"])
    if available is not None and need > available:
        raise NoRoomToDerive(f"deriving int8 prompt weights needs ~{need / 2**30:.1f} GiB while the prompt graph "
                             f"opens; {available / 2**30:.1f} GiB is available")


def mapped_file(directory: Path, name: str) -> np.ndarray:
    """A file of the artifact directory, memory-mapped (a name outside it is refused)."""
    path = (directory / name).resolve()
    if path.parent != directory.resolve() or not path.is_file():
        raise ArtifactError(f"the prompt graph's external data {name!r} is not a file of {directory}")
    return np.memmap(path, dtype=np.uint8, mode="r")


def _read(files: dict[str, np.ndarray], spec: dict, what: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One source of the table: a slice of a mapped file, checked to be the size its shape says and to fit."""
    data = files[spec["file"]]
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    offset, length = _int(spec["offset"]), _int(spec.get("length", count))
    if length != count:
        raise ArtifactError(f"{what} at {spec['file']}+{offset}: {length} bytes where its shape {list(shape)} "
                            f"needs {count}")
    if offset < 0 or offset + count > data.size:
        raise ArtifactError(f"{what} at {spec['file']}+{offset} ({count} bytes) do not fit {spec['file']} "
                            f"({data.size} bytes)")
    return data[offset:offset + count].view(dtype).reshape(shape)


def _int(v) -> int:
    if type(v) is not int:  # a float offset would be truncated, a bool would pass as 0 or 1
        raise ArtifactError(f"the int8 prompt table holds {v!r} where an integer belongs")
    return v


def layout(shapes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Where each linear's int8 weights [N, K] and fp32 scales [N] lie in DERIVED_FILE, one after the other,
    each ALIGN-aligned: ([(q_at, s_at)], total bytes). The graph's declarations and the table both follow it."""
    places, offset = [], 0
    for n, k in shapes:
        q_at = offset
        s_at = _aligned(q_at + n * k)
        offset = _aligned(s_at + 4 * n)
        places.append((q_at, s_at))
    return places, offset


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def check_table(table: dict) -> None:
    """A table this version reads, whose offsets are `layout`'s for its shapes: no two linears' int8 weights
    overlap and none overruns the buffer. (Where each linear's codes lie is the export's word, kept honest by
    the manifest's sha256 of the table and of weights.bin.)"""
    if table.get("format") != TABLE_FORMAT:
        raise ArtifactError(f"unknown int8 prompt table format {table.get('format')!r} (this version reads "
                            f"{TABLE_FORMAT}); --prompt-weights stored runs the graph as exported")
    lins = table["linears"]
    for lin in lins:
        n, k, block = _int(lin["n"]), _int(lin["k"]), _int(lin["block"])
        if n <= 0 or k <= 0 or block <= 0 or k % block or block % 2:
            raise ArtifactError(f"{lin.get('name')}: MatMulNBits shape N={n} K={k} block={block} is not derivable")
    places, total = layout([(lin["n"], lin["k"]) for lin in lins])
    got = [(_int(lin["q_at"]), _int(lin["s_at"])) for lin in lins]
    if got != places or _int(table["bytes"]) != total:
        bad = next((lin.get("name") for lin, p, g in zip(lins, places, got) if p != g), "the total")
        raise ArtifactError(f"the int8 prompt table's offsets overlap or overrun ({bad})")


def derive_weights(directory: Path, table: dict, threads: int | None = None) -> dict[str, np.ndarray]:
    """Every external file the int8 prompt graph reads, by name: DERIVED_FILE's bytes made from the int4 codes
    (`derive_int8` per linear, `threads` workers: numpy releases the GIL) and the artifact's own files,
    memory-mapped."""
    check_table(table)
    files = {name: mapped_file(directory, name) for name in table["files"]}
    derived = np.empty(table["bytes"], np.uint8)

    def derive(lin: dict) -> None:
        n, k, block = int(lin["n"]), int(lin["k"]), int(lin["block"])
        blocks = k // block
        name = lin.get("name")
        b = _read(files, lin["b"], f"{name}: int4 codes", np.uint8, (n, blocks, block // 2))
        s = _read(files, lin["scales"], f"{name}: int4 scales", np.float32, (n, blocks))
        if not np.isfinite(s).all():  # the int4 graph would give NaN logits; rounded codes would hide them
            raise ArtifactError(f"{lin.get('name')}: its int4 scales have NaN or inf values (a damaged weights file?)")
        zp = (_read(files, lin["zero_points"], f"{name}: int4 zero points", np.uint8, (n, (blocks + 1) // 2))
              if lin["zero_points"] else None)
        q_at, s_at = int(lin["q_at"]), int(lin["s_at"])
        q_out = derived[q_at:q_at + n * k].view(np.int8).reshape(n, k)
        s_out = derived[s_at:s_at + 4 * n].view(np.float32)
        for r in range(0, n, TILE_ROWS):  # a tile's int16 temporaries stay in cache: 6.4 vs 12.4 ns a weight
            rows = slice(r, r + TILE_ROWS)
            q_out[rows], s_out[rows] = derive_int8(b[rows], s[rows], None if zp is None else zp[rows],
                                                   min(TILE_ROWS, n - r), k, block)

    with ThreadPoolExecutor(max(1, threads or os.cpu_count() or 1)) as pool:
        list(pool.map(derive, table["linears"]))  # list(): a worker's exception surfaces here
    return {DERIVED_FILE: derived, **files}
