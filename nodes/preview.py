"""Previews while sampling: the x0 estimate of each step as a small image, by one of ComfyUI's methods.

- `latent2rgb`: each latent pixel's 4 channels, in the sampler's scaled latent space (VAE latent × 0.18215), go
  through a fixed 4×3 linear map fitted for SD1.x, then [-1, 1] → [0, 255]. The image is the latent's size (1/8 of
  the output), first batch item only. Costs nothing.
- `taesd`: the family's TAESD decoder (`taesd_decoder.*` for SD1.x/SD2.x, `taesdxl_decoder.*` for SDXL, in
  models/vae_approx, as ComfyUI finds them) decodes the x0 estimate to a full-size image, fitted into 512 px. When
  the decoder file is missing, latent2rgb is used and a warning is logged once per family.
- `auto` (the default): taesd where the family's decoder file is there, latent2rgb otherwise, as in ComfyUI.

The method is the server's (`--preview-method`, `configure`) unless a prompt names its own
(`extra_data.preview_method`, reaching nodes as `ctx.preview_method`); whether a prompt gets previews at all is
decided per prompt by the server and reaches nodes as `ctx.wants_previews`.
"""
from __future__ import annotations

import logging
from typing import Any

METHODS = ("none", "auto", "latent2rgb", "taesd")
METHOD = "auto"
# which TAESD decodes a family's latents (ComfyUI's file names in models/vae_approx)
TAESD_FOR_FAMILY = {"sd15": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sdxl_refiner": "taesdxl"}
log = logging.getLogger(__name__)
_decoders: dict[str, tuple[Any, Any]] = {}  # TAESD name -> ((file version, device, dtype), decoder or None)
_warned: set[str] = set()
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


def configure(method: str) -> None:
    """Set the server's preview method (one of METHODS)."""
    global METHOD
    enabled(method)
    METHOD = method


def preview_image(x0: Any, family: str | None = None, method: str | None = None,
                  max_size: int = PREVIEW_SIZE) -> Any:
    """A PIL image of the first item of a scaled x0 estimate, by `method` (a prompt's own choice) or else the
    configured one; None when none fits."""
    method = method if method in METHODS and method != "none" else METHOD
    if method in ("auto", "taesd"):
        decoder = _taesd_decoder(family, method)
        if decoder is not None:
            return _decode_taesd(decoder, x0, max_size)
    return latent_to_rgb(x0, max_size)


def _taesd_decoder(family: str | None, method: str) -> Any:
    """The family's TAESD decoder, loaded once per file version; None when there is none (warned for `taesd`)."""
    name = TAESD_FOR_FAMILY.get(family or "")
    if name is None:
        return None
    from . import devices
    from .models import taesd_file

    path = taesd_file(name, "decoder")
    if path is None:
        if method == "taesd" and name not in _warned:
            _warned.add(name)
            log.warning("TAESD previews asked for, but models/vae_approx has no %s_decoder file; using latent2rgb",
                        name)
        return None
    st = path.stat()
    policy = devices.POLICY  # on the sampler's device: a full-size decode per step must not wait for the CPU
    identity = (str(path), st.st_size, st.st_mtime_ns, str(policy.device), policy.vae_dtype())
    cached = _decoders.get(name)
    if cached is None or cached[0] != identity:
        from .diffusion.reading import CheckpointError
        from .diffusion.taesd import load_taesd_decoder

        try:
            _decoders[name] = (identity, load_taesd_decoder(path, policy.device, policy.vae_dtype()))
        except CheckpointError as e:
            log.warning("TAESD preview decoder not usable, using latent2rgb: %s", e)
            _decoders[name] = (identity, None)
    return _decoders[name][1]


def _decode_taesd(decoder: Any, x0: Any, max_size: int) -> Any:
    import torch
    from PIL import Image

    latent = x0[:1] if x0.ndim == 4 else x0[None]
    weight = next(decoder.parameters())
    with torch.inference_mode():
        out = decoder(latent.detach().to(device=weight.device, dtype=weight.dtype))[0].float().cpu()  # [-1, 1]
    pixels = ((out + 1.0) / 2.0).clamp(0, 1).movedim(0, -1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return image


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
