"""The signature cache: node outputs keyed by signature, kept on the device that made them.

Two pools with their own byte budgets: "outputs" (latents, images, conditionings) and "models"
(weights). Each pool evicts least recently used entries. In the outputs pool, entries holding
accelerator tensors are first spilled to CPU memory when accelerator bytes exceed their budget,
and dropped only when the pool's total exceeds its budget. Entries are kept across runs, so going
back to an earlier workflow is a hit (A → B → A).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

GiB = 1024**3


def _tensors(value: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Every tensor reachable from a node output (containers, modules, plain objects), each once."""
    seen = set() if seen is None else seen
    if depth > 6 or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.nn.Module):
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1, seen)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for v in vars(value).values():
            yield from _tensors(v, depth + 1, seen)


def storages_of(value: Any) -> dict[tuple[str, int], tuple[int, bool]]:
    """{(device, storage address): (bytes, on an accelerator)} of the tensors in a value, each storage once."""
    out: dict[tuple[str, int], tuple[int, bool]] = {}
    for t in _tensors(value):
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key not in out:
            out[key] = (t.untyped_storage().nbytes(), t.device.type != "cpu")
    return out


def measure(value: Any, held: set[tuple[str, int]] | frozenset = frozenset()) -> tuple[int, int]:
    """(total bytes, bytes on accelerators) of the tensors in a value, shared storage counted once, storages in
    `held` (already counted by other cache entries, e.g. the weights a patched model view shares) not at all."""
    total = accel = 0
    for key, (n, on_accel) in storages_of(value).items():
        if key in held:
            continue
        total += n
        accel += n if on_accel else 0
    return total, accel


def to_cpu(value: Any) -> Any:
    """The same structure with accelerator tensors moved to CPU (other objects unchanged)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    return value


@dataclass
class Entry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None
    nbytes: int
    accel_bytes: int


class Pool:
    def __init__(self, budget: int, accel_budget: int | None = None) -> None:
        self.budget = budget
        self.accel_budget = budget if accel_budget is None else accel_budget
        self.entries: OrderedDict[str, Entry] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    @property
    def accel_bytes(self) -> int:
        return sum(e.accel_bytes for e in self.entries.values())

    def fit(self, protect: set[str]) -> list[str]:
        """Spill, then evict least recently used entries until within budget; returns evicted keys."""
        for key, entry in list(self.entries.items()):
            if self.accel_bytes <= self.accel_budget:
                break
            if entry.accel_bytes and key not in protect:
                entry.outputs = to_cpu(entry.outputs)
                entry.nbytes, entry.accel_bytes = measure(entry.outputs)
        evicted = []
        for key in list(self.entries):
            if self.nbytes <= self.budget:
                break
            if key not in protect:
                del self.entries[key]
                evicted.append(key)
        return evicted


class Cache:
    """Signature → outputs, in two budgeted LRU pools."""

    def __init__(self, outputs_budget: int = 4 * GiB, models_budget: int = 16 * GiB,
                 accel_outputs_budget: int | None = None) -> None:
        self.pools = {"outputs": Pool(outputs_budget, accel_outputs_budget), "models": Pool(models_budget)}
        self.evicted: set[str] = set()  # signatures once held, to explain a re-run

    def get(self, key: str) -> Entry | None:
        for pool in self.pools.values():
            entry = pool.entries.get(key)
            if entry is not None:
                pool.entries.move_to_end(key)
                return entry
        return None

    def __contains__(self, key: str) -> bool:
        return any(key in p.entries for p in self.pools.values())

    def put(self, key: str, outputs: tuple[Any, ...], ui: dict[str, Any] | None, pool: str = "outputs",
            protect: set[str] | None = None) -> None:
        # Storage another entry already holds is not counted again (a view over cached weights costs its own
        # tensors only). If that entry goes first, the shared bytes go uncounted until this one goes too.
        held = {s for k, p in self.pools.items() for ek, e in p.entries.items() if ek != key
                for s in storages_of(e.outputs)}
        nbytes, accel = measure(outputs, held)
        target = self.pools[pool]
        target.entries[key] = Entry(outputs, ui, nbytes, accel)
        target.entries.move_to_end(key)
        self.evicted.discard(key)
        self.evicted.update(target.fit((protect or set()) | {key}))

    def clear(self, pool: str | None = None) -> None:
        for name, p in self.pools.items():
            if pool in (None, name):
                self.evicted.update(p.entries)
                p.entries.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: {"entries": len(p.entries), "bytes": p.nbytes, "accel_bytes": p.accel_bytes,
                       "budget": p.budget} for name, p in self.pools.items()}
