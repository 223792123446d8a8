"""glibc heap reuse (hostmem.py): inside `reuse_heap` freed tensor memory is reused without new page
faults; on leaving, the memory goes back to the kernel; SUMI_MALLOC_TUNING=0 turns it off."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hostmem

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(hostmem._libc() is None,
                                reason="mallopt/malloc_trim exist only in glibc: runs on Linux with glibc, as in CI")

# Inside reuse_heap: allocates and frees a 64 MiB tensor 20 times (after 10 rounds in which the heap settles)
# and counts the page faults of those 20; then the resident memory (MiB above the start) just before and
# just after leaving the block.
PROBE = """
import resource
import hostmem
import torch

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

base = resident_mib()
with hostmem.reuse_heap() as on:
    for _ in range(10):
        torch.ones(16 << 20).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(16 << 20).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    kept = resident_mib() - base
print(on, faults, round(kept), round(resident_mib() - base))
"""


def _probe(tuning: str) -> tuple[str, int, int, int]:
    env = {**os.environ, "SUMI_MALLOC_TUNING": tuning}
    on, faults, kept, after = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                                             text=True, check=True).stdout.split()
    return on, int(faults), int(kept), int(after)


@glibc_only
def test_reuse_heap_keeps_freed_memory_then_gives_it_back() -> None:
    on, faults, kept, after = _probe("1")
    off, faults_default, kept_default, _ = _probe("0")
    assert (on, off) == ("True", "False")
    pages = 20 * (64 << 20) // 4096  # one fault per 4 KiB page when every allocation is a fresh mapping
    assert faults_default > pages // 2
    assert faults < pages // 4  # the heap may still grow once or twice; the defaults fault every time
    assert kept >= 60 and kept_default < 32  # the freed 64 MiB stays resident inside the block only
    assert after < 32  # and is trimmed when the block ends


def test_nested_blocks_share_one_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[dict[int, int]] = []
    monkeypatch.setattr(hostmem, "available", lambda: True)
    monkeypatch.setattr(hostmem, "_apply", applied.append)
    monkeypatch.setattr(hostmem, "trim", lambda: applied.append({}))
    with hostmem.reuse_heap() as outer:
        with hostmem.reuse_heap() as inner:
            assert applied == [hostmem.REUSE]
        assert applied == [hostmem.REUSE] and outer and inner
    assert applied == [hostmem.REUSE, hostmem.DEFAULTS, {}]
    with hostmem.reuse_heap(enabled=False) as on:
        assert not on and len(applied) == 3


def test_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUMI_MALLOC_TUNING", "0")
    with hostmem.reuse_heap() as on:
        assert on is False
    hostmem.trim()  # harmless anywhere
