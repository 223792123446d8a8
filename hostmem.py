"""Host (CPU) memory: a glibc malloc mode for loops that allocate the same tensor sizes over and over.

glibc serves every allocation above a dynamic threshold (128 KiB to 32 MiB) with a fresh `mmap`, returns it
to the kernel on `free`, and trims the heap top as soon as 128 KiB are free there. A sampler calls the UNet
with the same activation sizes at every step, so with these defaults every activation page-faults in anew:
at 256 px, SD1.5 in fp32, a UNet call (batch 2) took 2.77 s with 480,000 page faults on this project's
2-core CPU, and 2.35 s with none once everything came from the heap and the heap was kept (`reuse_heap`).

The mode is scoped, not process-wide: kept for a whole run it made the 512 px VAE decode (a few 64 to
128 MiB buffers of different sizes) fragment the heap, so that process peaked at 7.0 GiB instead of 5.6;
the decode now reuses the heap within each decoder stage and trims between stages (nodes/models.py).
Inside `reuse_heap()` no allocation gets its own mapping and the heap is trimmed only past 1 GiB free; on
leaving, the three parameters get glibc's documented default values back and the free heap is handed back to
the kernel (`malloc_trim`). One thing does not come back: glibc raises its mmap threshold dynamically (towards
32 MiB, following the sizes of freed mappings) only until a program sets any of these parameters; from the first
block on, the threshold stays where it was then (128 KiB unless large blocks were freed before) for the rest of
the process, so outside the blocks every allocation above it is a fresh mapping. That is glibc's behaviour
before any large free, and the blocks cover the loops where it costs.
`SUMI_MALLOC_TUNING=0` turns it all off (mallopt is never called); elsewhere than glibc it does nothing.

Not diffusion code: a generic host-memory helper used by the diffusion nodes (sampling, VAE decode) and by the
executor's /free handling (`trim`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from functools import cache

# mallopt parameters (malloc.h) and glibc's documented defaults for them
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}
REUSE = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}

_lock = threading.Lock()
_depth = 0


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such parameters)
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether `reuse_heap` changes anything here (glibc, and not switched off by SUMI_MALLOC_TUNING=0)."""
    return os.environ.get("SUMI_MALLOC_TUNING", "1") != "0" and _libc() is not None


def _apply(settings: dict[int, int]) -> None:
    libc = _libc()
    assert libc is not None
    for param, value in settings.items():
        libc.mallopt(param, value)


@contextlib.contextmanager
def reuse_heap(enabled: bool = True) -> Iterator[bool]:
    """Serve allocations from a heap that is kept while the block runs; yields whether the mode is on.
    Nested or concurrent blocks share one mode, which ends with the last of them."""
    global _depth
    if not (enabled and available()):
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _apply(REUSE)
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _apply(DEFAULTS)
                trim()


def settle() -> None:
    """Inside `reuse_heap`, hand the free heap back: between stages of a loop whose buffer sizes change."""
    if _depth > 0:
        trim()


def trim() -> None:
    """Give free heap memory back to the kernel (after a heap-reusing block, after unloading models)."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
