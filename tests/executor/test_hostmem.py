"""glibc allocator tuning (executor/hostmem.py): freed tensor memory is reused without new page faults."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from executor import hostmem

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(hostmem._libc() is None, reason="glibc allocator settings (Linux) only")

# Allocates and frees a 64 MiB tensor twenty times (after a few rounds in which the heap settles) and prints
# the page faults those twenty took.
PROBE = """
import resource, sys
from executor import hostmem
tuned = hostmem.tune()
import torch
for _ in range(10):
    torch.ones(16 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 << 20).sum()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(tuning: str) -> tuple[str, int]:
    env = {**os.environ, "SUMI_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@glibc_only
def test_tuned_allocator_reuses_freed_tensor_memory() -> None:
    tuned, faults_tuned = _faults("1")
    untuned, faults_default = _faults("0")
    assert (tuned, untuned) == ("True", "False")
    pages = 20 * (64 << 20) // 4096  # one fault per 4 KiB page when every allocation is a fresh mapping
    assert faults_default > pages // 2
    assert faults_tuned < pages // 4  # the heap may still grow once or twice; the defaults fault every time


def test_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostmem, "_tuned", False)
    monkeypatch.setenv("SUMI_MALLOC_TUNING", "0")
    assert hostmem.tune() is False
    hostmem.trim()  # harmless anywhere
