"""Tensor helpers shared by the latent, image and mask tools: batch matching, ComfyUI's resize and paste rules.

Written from ComfyUI's documented behaviour (`comfy.utils.common_upscale`, `repeat_to_batch_size`, the mask
nodes' `composite`), not from its code.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .latent import centre_crop
from .latent import upscale as _latent_upscale

IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or cyclically repeat dim 0 to `batch` entries (ComfyUI's rule for mismatched batches)."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = [math.ceil(batch / tensor.shape[0])] + [1] * (tensor.dim() - 1)
        return tensor.repeat(reps)[:batch]
    return tensor


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos on 8-bit copies of each image, as ComfyUI does (so the result is quantised to 1/255)."""
    from PIL import Image

    out = []
    for image in samples:
        pixels = np.clip(255.0 * image.movedim(0, -1).float().cpu().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
        resized = resized.resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.asarray(resized).astype(np.float32) / 255.0
        out.append(torch.from_numpy(array.reshape(height, width, -1)).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """`common_upscale` on [B,C,H,W]: optional centre crop to the new aspect ratio, then the method."""
    if method != "lanczos":
        return _latent_upscale(samples, width, height, method, crop)
    if crop == "center":
        samples = centre_crop(samples, width, height)
    return _lanczos(samples, width, height)


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """`resize` for IMAGE tensors [B,H,W,C]."""
    return resize(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def alpha_match(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give `source` the channel count of `destination`: drop its alpha, or add an opaque one."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1), value=1.0)
    return destination, source


def paste(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
          multiplier: int, resize_source: bool = False) -> torch.Tensor:
    """Paste `source` [B,C,h,w] into a copy of `destination` [B,C,H,W] at (x, y) in pixels (÷ multiplier for
    latents), blended by `mask` (resized bilinearly to the source); the part outside the destination is dropped.
    The source's batch is cut or repeated to the destination's."""
    destination = destination.clone()
    source = source.to(destination.device, destination.dtype)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, destination.dtype).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = repeat_to_batch(F.interpolate(mask, size=source.shape[-2:], mode="bilinear"), source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    blended = mask * source[..., :visible_h, :visible_w] \
        + (1.0 - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = blended
    return destination
