"""What the build host is: CPU model and the ISA features that decide which INT8 kernels are fast and exact."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu() -> dict[str, Any]:
    """CPU model, logical cores and the x86 ISA flags relevant to INT8 (empty on non-Linux or non-x86)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags]}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def has_int8_dot() -> bool:
    """True where u8 x s8 products accumulate exactly in 32 bits: x86 with VNNI/AMX, or any ARM64 CPU.

    Without VNNI, x86 INT8 GEMM kernels (vpmaddubsw) add pairs of u8*s8 products in int16 and can saturate;
    7-bit weights (ONNX Runtime's reduce_range, fbgemm's default) avoid that.
    """
    if not is_x86():
        return True
    return any(f in cpu()["isa"] for f in INT8_DOT_FLAGS)
