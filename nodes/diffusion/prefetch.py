"""Background reading: tensors read and cast on a thread, in file order, while the caller builds modules."""
from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import torch

from .reading import Source


class Prefetch(Mapping[str, torch.Tensor]):
    """Reads and casts tensors on a background thread, in file order, while the caller does other work
    (importing diffusers and building the modules: about 4 s of Python that holds the GIL, while reading
    and casting release it). `self[name]` waits for that tensor; a reading error is raised there."""

    def __init__(self, source: Source, names: list[str], device: str | torch.device, dtype: torch.dtype) -> None:
        self.meta, self._done = source.meta, {}
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._pending = set(names)
        self._thread = threading.Thread(target=self._run, args=(source, names, device, dtype),
                                        name="sumi-checkpoint-read", daemon=True)
        self._thread.start()

    def _run(self, source: Source, names: list[str], device: str | torch.device, dtype: torch.dtype) -> None:
        try:
            for name in names:
                if self._stop:
                    return
                t = source.read(name, device, dtype if source.meta[name].is_floating_point() else None)
                with self._cond:
                    self._done[name] = t
                    self._pending.discard(name)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the reader of the next tensor
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def __contains__(self, name: object) -> bool:
        return name in self.meta

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        with self._cond:
            while name in self._pending and self._error is None:
                self._cond.wait()
            if name in self._done:
                return self._done.pop(name)
            if self._error is not None:
                raise self._error
        raise KeyError(f"{name} was not prefetched")

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._done.clear()


