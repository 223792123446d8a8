"""Deterministic ESRGAN files: the parity-next reference upscaler and the tiny embedded one, by one rule.

Layout: RealESRGAN_x4plus's new-arch names (`conv_first`, `body.<b>.rdb<1-3>.conv<1-5>`, `conv_body`, `conv_up1`,
`conv_up2`, `conv_hr`, `conv_last`, 3×3 convs with biases) inside `{"params_ema": …}`, float32, as the released
file is. Values: the checkpoints' per-tensor rule (`fixtures.rule_tensor`: seeded from the name, weights
/ sqrt(3·fan_in), biases × 0.02), except `conv_last.weight` × 0.25 and `conv_last.bias` 0.5 so the output sits
mostly inside [0, 1], rounded through float16 (shared/reference/parity-next/make_reference_extras.py's rule).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .diffusion.fixtures import content_sha256, rule_tensor

REFERENCE = {"blocks": 23, "features": 64, "growth": 32}  # RealESRGAN_x4plus
# spandrel builds RRDBNets with growth 32 only; the gain keeps the narrow net's output from collapsing to a
# constant (std 0.002 at gain 1, 0.04 at gain 2; nothing clamped)
TINY = {"blocks": 1, "features": 16, "growth": 32, "gain": 2.0}


def esrgan_layout(blocks: int, features: int, growth: int, in_channels: int = 3,
                  out_channels: int = 3) -> dict[str, list[int]]:
    """{name: shape} of an ×4 RRDBNet in the new-arch names (each RRDB: 3 dense blocks of 5 convs)."""
    convs = [("conv_first", features, in_channels)]
    for b in range(blocks):
        for r in (1, 2, 3):
            convs += [(f"body.{b}.rdb{r}.conv{c}", features if c == 5 else growth, features + growth * (c - 1))
                      for c in range(1, 6)]
    convs += [(n, features, features) for n in ("conv_body", "conv_up1", "conv_up2", "conv_hr")]
    convs.append(("conv_last", out_channels, features))
    layout = {}
    for name, out_c, in_c in convs:
        layout[f"{name}.weight"] = [out_c, in_c, 3, 3]
        layout[f"{name}.bias"] = [out_c]
    return layout


def esrgan_tensor(name: str, shape: list[int], seed: int = 0, gain: float = 1.0) -> torch.Tensor:
    """One tensor by the rule; `gain` multiplies every weight but conv_last's (1 for the reference file)."""
    if name == "conv_last.bias":
        t = torch.full(shape, 0.5)
    else:
        t = rule_tensor(name, shape, torch.float32, seed)
        if name == "conv_last.weight":
            t = t * 0.25
        elif gain != 1.0 and name.endswith(".weight"):
            t = t * gain
    return t.to(torch.float16).to(torch.float32)


def write_esrgan(path: str | os.PathLike, blocks: int, features: int, growth: int, seed: int = 0,
                 gain: float = 1.0) -> str:
    """Write an ESRGAN .pth by the rule; returns the content SHA-256 over the `params_ema.<name>` tensors."""
    weights = {n: esrgan_tensor(n, s, seed, gain) for n, s in esrgan_layout(blocks, features, growth).items()}
    torch.save({"params_ema": weights}, Path(path))
    return content_sha256({f"params_ema.{n}": t for n, t in weights.items()})


def write_reference_esrgan(path: str | os.PathLike) -> str:
    """parity-next's `reference_esrgan_x4.pth` (content SHA-256 ea39f266…)."""
    return write_esrgan(path, **REFERENCE)
