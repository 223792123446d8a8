"""Inpainting: VAEEncodeForInpaint and InpaintModelConditioning, with ComfyUI's names, inputs and arithmetic
(masked pixels greyed to 0.5 before encoding, the noise mask grown by a box filter, the inpainting UNet's extra
inputs carried on the conditioning). The sampler side: nodes/models.py `inpaint_concat`, sample.py noise masks."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from executor.schema import Input, Node, Output

from .conditioning import set_values


def _mask_and_crop(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask resized (bilinear) to the image as [B, 1, H, W], both cropped to a multiple of 8, centred."""
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                         size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, top:top + h, left:left + w, :].clone(), mask[:, :, top:top + h, left:left + w]


def _grey_masked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixels where round(mask) = 1 become 0.5 grey: (p − 0.5)·(1 − round(m)) + 0.5, as ComfyUI computes it."""
    keep = (1.0 - mask.round()).squeeze(1)
    out = pixels[..., :3].clone()
    for i in range(3):
        out[:, :, :, i] -= 0.5
        out[:, :, :, i] *= keep
        out[:, :, :, i] += 0.5
    return out


class VAEEncodeForInpaint(Node):
    type = "VAEEncodeForInpaint"
    display_name = "VAE Encode (for Inpainting)"
    category = "latent/inpaint"
    description = ("Encodes the image with the masked pixels set to grey, for inpainting models; the noise mask "
                   "is the mask grown by grow_mask_by pixels.")
    inputs = (Input("pixels", "IMAGE"), Input("vae", "VAE"), Input("mask", "MASK"),
              Input("grow_mask_by", "INT", default=6, min=0, max=64, step=1))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, pixels: torch.Tensor, vae: Any, mask: torch.Tensor, grow_mask_by: int) -> tuple[Any, ...]:
        pixels, mask = _mask_and_crop(pixels, mask)
        if grow_mask_by == 0:
            grown = mask
        else:  # grown by a box filter so the repainted region's latent border is covered
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=math.ceil((grow_mask_by - 1) / 2)), 0, 1)
        samples = vae.encode(_grey_masked(pixels, mask))
        h, w = pixels.shape[1], pixels.shape[2]
        return ({"samples": samples, "noise_mask": grown[:, :, :h, :w].round()},)


class InpaintModelConditioning(Node):
    type = "InpaintModelConditioning"
    category = "conditioning/inpaint"
    inputs = (Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              Input("pixels", "IMAGE"), Input("mask", "MASK"),
              Input("noise_mask", "BOOLEAN", default=True,
                    tooltip="Add a noise mask to the latent so sampling will only happen within the mask."))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    def run(self, ctx: Any, positive: list, negative: list, vae: Any, pixels: torch.Tensor, mask: torch.Tensor,
            noise_mask: bool) -> tuple[Any, ...]:
        original, mask = _mask_and_crop(pixels, mask)
        concat = vae.encode(_grey_masked(original, mask))
        latent: dict[str, Any] = {"samples": vae.encode(original[..., :3])}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat, "concat_mask": mask}
        return (set_values(positive, values), set_values(negative, values), latent)


NODES = (VAEEncodeForInpaint, InpaintModelConditioning)
