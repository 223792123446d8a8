"""Weight patches over shared modules: added for the length of a `with` block, restored bit-exactly after.

A cached model is shared by every workflow that loads it; LoRA and the like must never leave it changed. So a
patch is data (`WeightPatch`), a patched model is a view holding a tuple of them, and `patched(module, patches)`
adds them in place only while a sampler or an encoder runs, under one lock (the views share the weights).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightPatch:
    """W += strength · delta() for the parameter `key` of a module (LoRA: delta = up @ down, strength = the
    user's strength × alpha / rank). The product is formed in float32 and cast to W's dtype before adding."""

    key: str
    delta: Callable[[], torch.Tensor]
    strength: float = 1.0
    # the precision the patched weight is held at, when coarser than the module's (ComfyUI keeps text encoder
    # weights in fp16 even when it computes in fp32, so a LoRA merged into them is rounded to fp16)
    round_to: torch.dtype | None = None


_LOCK = threading.RLock()


@contextlib.contextmanager
def patched(module: torch.nn.Module, patches: Sequence[WeightPatch]) -> Iterator[torch.nn.Module]:
    """`module` with `patches` applied in place; the original values come back on leaving, errors included."""
    if not patches:
        yield module
        return
    params = dict(module.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    with _LOCK, torch.no_grad():
        try:
            for patch in patches:
                p = params[patch.key]
                if patch.key not in saved:
                    saved[patch.key] = p.detach().clone()
                delta = patch.delta().to(device=p.device, dtype=torch.float32).reshape(p.shape)
                p.add_((patch.strength * delta).to(p.dtype))
                if patch.round_to is not None:
                    p.copy_(p.to(patch.round_to))
            yield module
        finally:
            for key, original in saved.items():
                params[key].copy_(original)
