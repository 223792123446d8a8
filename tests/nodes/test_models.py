"""The VAE socket object (nodes/models.py): in-place activations and per-stage heap trimming change nothing in
the numbers, only how memory is used."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import hostmem
from nodes import models
from nodes.diffusion.checkpoint import load_checkpoint


def test_vae_in_place_activations_and_stage_trims_are_bit_identical(tiny_checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    plain = copy.deepcopy(ckpt.vae).eval()
    vae = models.VAEModel(ckpt.vae, torch.device("cpu"), torch.float32)
    silus = [m for m in vae.vae.modules() if isinstance(m, torch.nn.SiLU)]
    assert silus and all(m.inplace for m in silus)
    assert not any(m.inplace for m in plain.modules() if isinstance(m, torch.nn.SiLU))

    settled: list[int] = []
    real_settle = hostmem.settle
    monkeypatch.setattr(hostmem, "settle", lambda: (settled.append(hostmem._depth), real_settle()))
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = vae.decode(latent)
    with torch.inference_mode():
        want = ((plain.decode(latent, return_dict=False)[0] + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert images.shape == (2, 64, 64, 3) and torch.equal(images, want)
    assert len(settled) == 1 + len(vae.vae.decoder.up_blocks)  # the middle and every up stage, once each
    assert all(depth == (1 if hostmem.available() else 0) for depth in settled)

    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want_latent = plain.encode(pixels.movedim(-1, 1) * 2 - 1, return_dict=False)[0].mode()
    assert torch.equal(vae.encode(pixels), want_latent)
