"""The memory roof: this machine's streaming read bandwidth, measured in the same run as the benchmark.

Decode of a quantized model is bandwidth-bound, so tokens/s x bytes read per token ÷ this bandwidth is
how close a runtime gets to the hardware. The kernel is C (`stream_read.c`), compiled on first use with
the system compiler and `-march=native`, one call per thread on a disjoint slice (ctypes releases the
GIL). A numpy reduction is not used: it is compute-bound and reads only about half the bandwidth on
AVX-512 machines. Without a C compiler the fallback is onnxruntime's ReduceSum, and the result says so.
"""
from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import numpy as np

from .tools import build_stream_read

MIN_BUFFER_BYTES = 512 * 2**20
PASSES = 5


def last_level_cache_bytes() -> int:
    """The largest CPU cache sysfs reports (0 where it reports none). Server parts reach hundreds of MB:
    this project's 2-core Xeon VM reports a 480 MiB L3, which a 512 MiB buffer would not get past."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        try:
            sizes.append(int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1))
        except ValueError:
            continue
    return max(sizes, default=0)


def buffer_bytes() -> int:
    """4x the last-level cache, at least 512 MiB: the read roof is DRAM's, not a cache's."""
    return max(MIN_BUFFER_BYTES, 4 * last_level_cache_bytes())


def _compile() -> ctypes.CDLL | None:
    """The kernel as a shared library (built once per source version and machine), or None without a compiler."""
    lib = build_stream_read()
    if lib is None:
        return None
    dll = ctypes.CDLL(str(lib))
    dll.stream_read.restype, dll.stream_read.argtypes = ctypes.c_float, [ctypes.c_void_p, ctypes.c_size_t]
    dll.kernel_isa.restype = ctypes.c_char_p
    return dll


def _timed_parallel(fns: list) -> float:
    """Seconds for all fns to finish when started together."""
    barrier = threading.Barrier(len(fns) + 1)

    def run(fn):
        barrier.wait()
        fn()

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def measure_read_bandwidth(thread_counts: list[int]) -> dict:
    """{"kernel": str, "gb_per_s": {threads: best GB/s over PASSES}} for each thread count."""
    nbytes = buffer_bytes()
    buf = np.ones(nbytes // 4, dtype=np.float32)  # touched: pages are resident before timing
    dll = _compile()
    results = {}
    if dll is not None:
        kernel = f"C stream_read ({dll.kernel_isa().decode()}, -O3 -march=native)"
        for n in thread_counts:
            slices = np.array_split(buf, n)
            fns = [lambda s=s: dll.stream_read(s.ctypes.data, s.size) for s in slices]
            best = min(_timed_parallel(fns) for _ in range(PASSES))
            results[n] = round(buf.nbytes / best / 1e9, 2)
    else:
        kernel = "onnxruntime ReduceSum (no C compiler found: a lower bound of the roof)"
        results = _ort_bandwidth(buf, thread_counts)
    return {"kernel": kernel, "buffer_mib": nbytes // 2**20, "last_level_cache_mib": last_level_cache_bytes() // 2**20,
            "gb_per_s": results}


def _ort_bandwidth(buf: np.ndarray, thread_counts: list[int]) -> dict:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "read",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    out = {}
    for n in thread_counts:
        so = ort.SessionOptions()
        so.intra_op_num_threads = n
        sess = ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
                                    so, providers=["CPUExecutionProvider"])
        best = min(_time(lambda: sess.run(None, {"x": buf})) for _ in range(PASSES))
        out[n] = round(buf.nbytes / best / 1e9, 2)
    return out


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
