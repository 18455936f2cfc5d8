"""What the numbers were measured on: CPU, ISA flags, cores, load average, package versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni", "fma", "asimd", "sve", "i8mm", "dotprod")


def machine_facts() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "flags": sorted(f for f in FLAGS if f in flags),
            "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "os": platform.platform()}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("retnet-edge", "onnxruntime", "executorch", "torch", "numpy", "llama_cpp_python"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
