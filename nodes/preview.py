"""Cheap previews while sampling: the x0 estimate projected straight to RGB, no VAE ("latent2rgb").

ComfyUI's `--preview-method latent2rgb` (what `auto` resolves to without TAESD): each latent pixel's 4 channels,
in the sampler's scaled latent space (VAE latent × 0.18215), go through a fixed 4×3 linear map fitted for SD1.x,
then [-1, 1] → [0, 255]. The image is the latent's size (1/8 of the output), first batch item only.
"""
from __future__ import annotations

from typing import Any

METHODS = ("none", "auto", "latent2rgb")  # `auto` is latent2rgb: Sumi ships no TAESD decoder
PREVIEW_SIZE = 512  # longest side of a preview, as ComfyUI's --preview-size default

# SD1.x latent → RGB factors (rows: latent channels 0..3, columns: R, G, B), as ComfyUI's and A1111's SD15 format.
SD15_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def enabled(method: str) -> bool:
    """Whether a --preview-method value produces previews."""
    if method not in METHODS:
        raise ValueError(f"unknown preview method {method!r}; choose one of {', '.join(METHODS)}")
    return method != "none"


def latent_to_rgb(x0: Any, max_size: int = PREVIEW_SIZE) -> Any:
    """A PIL RGB image of the first item of a [B, 4, h, w] scaled latent (or [4, h, w]), fitted into max_size;
    None for latents these factors do not fit (not 4 channels)."""
    import torch
    from PIL import Image

    with torch.no_grad():
        latent = x0[0] if x0.ndim == 4 else x0
        if latent.ndim != 3 or latent.shape[0] != len(SD15_RGB_FACTORS):
            return None
        latent = latent.detach().to(device="cpu", dtype=torch.float32)
        factors = torch.tensor(SD15_RGB_FACTORS, dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", latent, factors)
        pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image
