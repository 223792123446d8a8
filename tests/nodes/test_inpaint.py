"""Inpainting: VAEEncodeForInpaint greys the masked pixels and grows the noise mask by ComfyUI's box filter;
InpaintModelConditioning puts the masked-image latent and the fractional mask on both prompts and encodes the
original; a 9-channel UNet of the tiny family is detected and receives [x, round(mask), masked latent × scale];
without a mask it gets ones and the blank latent."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes import models
from nodes.inpaint import InpaintModelConditioning, VAEEncodeForInpaint


class FakeVAE:
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixels.clone())
        return pixels[..., :3].movedim(-1, 1)[:, :, ::8, ::8].mean(1, keepdim=True).repeat(1, 4, 1, 1)


def test_vae_encode_for_inpaint_greys_and_grows() -> None:
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:40] = 1.0
    mask[:, 16:48, 40:48] = 0.4  # rounds to 0: neither greyed nor grown from
    vae = FakeVAE()
    (latent,) = VAEEncodeForInpaint().run(None, pixels, vae, mask, 6)
    greyed = vae.seen[0]
    assert torch.all(greyed[0, 16:48, 16:40] == 0.5) and torch.equal(greyed[0, :16], pixels[0, :16])
    nm = latent["noise_mask"][0, 0]
    rows, cols = torch.nonzero(nm, as_tuple=True)
    # a 6×6 box with padding 3 grows a region 2 px before and 3 px after it
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (14, 50, 14, 42)
    assert set(nm.unique().tolist()) == {0.0, 1.0} and latent["samples"].shape == (1, 4, 8, 8)


def test_inpaint_model_conditioning_sets_both_prompts() -> None:
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:24, 8:24] = 0.7
    vae = FakeVAE()
    pos, neg = [[torch.zeros(1, 77, 8), {"pooled_output": None}]], [[torch.ones(1, 77, 8), {}]]
    p, n, latent = InpaintModelConditioning().run(None, pos, neg, vae, pixels, mask, True)
    assert torch.equal(vae.seen[1], pixels)  # the LATENT is the original image's encoding
    for side in (p, n):
        assert torch.equal(side[0][1]["concat_mask"], latent["noise_mask"]) and "concat_latent_image" in side[0][1]
    assert float(latent["noise_mask"].max()) == pytest.approx(0.7) and "concat_mask" not in pos[0][1]
    (_, _, no_mask) = InpaintModelConditioning().run(None, pos, neg, vae, pixels, mask, False)
    assert "noise_mask" not in no_mask


def test_nine_channel_unet_gets_mask_and_masked_latent(base: Path) -> None:
    model, clip, _ = models.load(models.ensure_default_checkpoint("sumi_tiny_sd15_inpainting.safetensors"))
    assert model.family == "sd15" and model.concat_channels == 5
    cond, pooled = clip.encode("a boat")
    image = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44] = 0.6
    inputs = model.model_inputs(cond, {"pooled_output": pooled, "concat_latent_image": image, "concat_mask": mask},
                                (1, 4, 8, 8), "positive")
    concat = inputs["concat"]
    want_mask = torch.nn.functional.interpolate(mask, size=(8, 8), mode="bilinear").round()
    assert torch.equal(concat[:, :1], want_mask) and torch.allclose(concat[:, 1:], image * 0.18215)
    blank = model.model_inputs(cond, {"pooled_output": pooled}, (1, 4, 8, 8), "positive")["concat"]
    assert torch.equal(blank[:, 0], torch.ones(1, 8, 8))
    assert torch.allclose(blank[0, 1:, 0, 0], torch.tensor(models.BLANK_INPAINT_LATENT))
    out = model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), inputs)
    assert out.shape == (1, 4, 8, 8)
