"""Host (CPU) memory: glibc malloc settings suited to tensor work, and giving freed memory back.

glibc serves every allocation above a dynamic threshold (128 KiB to 32 MiB) with a fresh `mmap` and
returns it to the kernel on `free`, and trims the heap top as soon as 128 KiB are free there. A UNet
forward pass allocates and frees the same activation sizes hundreds of times, so with the defaults every
one of them page-faults in anew: at 256 px, SD1.5 in fp32, about 2.3 million page faults and 4 CPU-seconds
of kernel time per four-step image on this project's 2-core CPU. Serving everything from the heap and
trimming it only past 1 GiB free keeps those pages: the same image took 12.0-12.5 s instead of 14.0-14.8 s
(sampling and decoding) with 30,000 instead of 2.3 million faults, and the process peaked 0.28 GiB higher.
Freed memory stays with the process until `trim()` (called when models are unloaded on request).
Torch's own huge-page option (THP_MEM_ALLOC_ENABLE) was as fast for sampling but doubled checkpoint
loading time (the kernel compacts memory for every 2 MiB page), so it is not used.
`SUMI_MALLOC_TUNING=0` leaves glibc's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
# M_MMAP_MAX 0: no allocation gets its own mapping (glibc still maps a fresh region if the heap cannot grow)
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}

_tuned = False


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt parameters to tune)
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Apply SETTINGS once per process; True if glibc accepted them all."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("SUMI_MALLOC_TUNING", "1") == "0" or (libc := _libc()) is None:
        return False
    _tuned = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _tuned


def trim() -> None:
    """Give free heap memory back to the kernel (after unloading models)."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
