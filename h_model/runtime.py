"""Process-level speed settings for CPU training."""
from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
_keeping = False  # whether keep_freed_memory() is in force


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap instead of returning it to the OS.

    Each training step allocates and frees the same ~100 MB activation tensors. By default
    glibc serves them with fresh mmaps, so every step pays page faults and page zeroing in
    the kernel (a third of a Conv-4 episode's time on 2 cores). Reusing the heap avoids it;
    peak memory is unchanged. A no-op (False) off Linux/glibc.
    """
    global _keeping
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _keeping = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 36)
                        and libc.mallopt(M_TOP_PAD, 1 << 28))
        return _keeping
    except (OSError, AttributeError):
        return False


def restore_malloc_defaults() -> bool:
    """Undo :func:`keep_freed_memory` and hand the heap's free pages back to the OS.

    For the phase after training: its allocations (whole-set embedding, evaluation) differ in
    size from the training steps' and would otherwise grow the kept heap on top of the freed
    training memory (measured: +1 GB of peak after a 1,400-episode default run).
    """
    global _keeping
    if not sys.platform.startswith("linux"):
        return False
    _keeping = False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
              and libc.mallopt(M_TOP_PAD, 128 * 1024))
        libc.malloc_trim(0)
        return bool(ok)
    except (OSError, AttributeError):
        return False


@contextmanager
def default_malloc() -> Iterator[None]:
    """Run a block (a validation pass) with glibc's defaults, then keep freed memory again.

    Inside the block large blocks are fresh mmaps, returned when freed, so the block's
    allocations, sized unlike the training steps', cannot grow the kept heap (measured: a
    +440 MB jump of peak memory at the default run's first validation). A no-op when
    :func:`keep_freed_memory` is not in force.
    """
    if not _keeping:
        yield
        return
    restore_malloc_defaults()
    try:
        yield
    finally:
        keep_freed_memory()


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX or AVX-512 BF16; Linux only).

    Only then does bf16 autocast on the CPU pay off (measured: a Conv-4 Prototypical 60-way
    1-shot step 0.21 -> 0.15 s with AMX); elsewhere oneDNN emulates bf16 and is slower.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap != "ALL" and "BF16" not in cap and "AMX" not in cap:
        return False  # oneDNN told to use an ISA without bf16 (e.g. AVX2: how an AVX2-only CPU runs)
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


#: The environment variables that cap the instruction sets used, to emulate a smaller CPU.
ISA_CAP_VARS = {"onednn_max_cpu_isa": "ONEDNN_MAX_CPU_ISA", "aten_cpu_capability": "ATEN_CPU_CAPABILITY",
                "mkl_enable_instructions": "MKL_ENABLE_INSTRUCTIONS", "opencv_cpu_disable": "OPENCV_CPU_DISABLE"}


def isa_caps() -> dict[str, str | None]:
    """The instruction-set caps in force (:data:`ISA_CAP_VARS`; None where unset)."""
    return {key: os.environ.get(var) for key, var in ISA_CAP_VARS.items()}


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU a figure was measured on: model name, SIMD flags, cores, and any oneDNN / ATen / MKL /
    OpenCV instruction-set cap (the environment variables that emulate a smaller CPU)."""
    model, flags = "unknown", set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in SIMD_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), **isa_caps()}
