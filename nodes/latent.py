"""Latent nodes: empty latents, upscaling, and ComfyUI's `.latent` files."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from executor.schema import Determinism, Input, Node, Output, Result

from . import paths
from .saving import input_fingerprint, metadata_chunks, output_slot

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


class EmptyLatentImage(Node):
    type = "EmptyLatentImage"
    display_name = "Empty Latent Image"
    category = "latent"
    description = "A batch of empty latents, the starting point of text-to-image."
    inputs = (Input("width", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8),
              Input("batch_size", "INT", default=1, min=1, max=4096))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, width: int, height: int, batch_size: int) -> tuple[Any, ...]:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation along the channel axis (dim 1), magnitudes interpolated linearly."""
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0)
    omega = dot.acos()
    so = omega.sin()
    lerp = ua * (1 - t) + ub * t
    slerp = (((1 - t) * omega).sin() * ua + (t * omega).sin() * ub) / so.clamp_min(1e-12)
    direction = torch.where(so.abs() < 1e-6, lerp, slerp)
    return direction * (na * (1 - t) + nb * t)


def _bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resampling where each 1-D blend is a slerp of the channel vectors (keeps latent norms)."""
    def along(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * n / size - 0.5).clamp(0, n - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        t = (pos - lo).reshape(shape).to(x)
        return _slerp(x.index_select(dim, lo.to(x.device)), x.index_select(dim, hi.to(x.device)), t)
    return along(along(samples.float(), height, 2), width, 3).to(samples.dtype)


def centre_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop [..., H, W] symmetrically to the aspect ratio of width × height (ComfyUI's "center" crop)."""
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize [B,C,H,W] to (height, width), optionally centre-cropping to the new aspect ratio first."""
    if crop == "center":
        samples = centre_crop(samples, width, height)
    if method == "bislerp":
        return _bislerp(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


class LatentUpscale(Node):
    type = "LatentUpscale"
    display_name = "Upscale Latent"
    category = "latent"
    inputs = (Input("samples", "LATENT"), Input("upscale_method", "COMBO", options=UPSCALE_METHODS),
              Input("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
              Input("crop", "COMBO", options=["disabled", "center"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples: dict[str, Any], upscale_method: str, width: int, height: int,
            crop: str) -> tuple[Any, ...]:
        s = samples["samples"]
        if width == 0 and height == 0:
            return (dict(samples),)
        if width == 0:  # 0 keeps the aspect ratio
            height = max(64, height)
            width = max(64, round(s.shape[-1] * height / s.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(s.shape[-2] * width / s.shape[-1]))
        else:  # as ComfyUI: each side is at least 64 pixels
            width, height = max(64, width), max(64, height)
        return ({**samples, "samples": upscale(s, width // 8, height // 8, upscale_method, crop)},)


class LatentUpscaleBy(Node):
    type = "LatentUpscaleBy"
    display_name = "Upscale Latent By"
    category = "latent"
    inputs = (Input("samples", "LATENT"), Input("upscale_method", "COMBO", options=UPSCALE_METHODS),
              Input("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples: dict[str, Any], upscale_method: str, scale_by: float) -> tuple[Any, ...]:
        s = samples["samples"]
        width, height = round(s.shape[-1] * scale_by), round(s.shape[-2] * scale_by)
        return ({**samples, "samples": upscale(s, width, height, upscale_method, "disabled")},)


class SaveLatent(Node):
    type = "SaveLatent"
    display_name = "Save Latent"
    category = "_for_testing"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    inputs = (Input("samples", "LATENT"), Input("filename_prefix", "STRING", default="latents/ComfyUI"))

    def run(self, ctx: Any, samples: dict[str, Any], filename_prefix: str) -> Result:
        from safetensors.torch import save_file

        folder, stem, subfolder, counter = output_slot(paths.FOLDERS.output, filename_prefix, "latent")
        name = f"{stem}_{counter:05}_.latent"
        # latent_format_version_0 marks samples stored unscaled (older files were ×0.18215).
        tensors = {"latent_tensor": samples["samples"].float().cpu().contiguous(),
                   "latent_format_version_0": torch.tensor([])}
        save_file(tensors, str(folder / name), metadata_chunks(ctx.prompt, ctx.extra_pnginfo))
        return Result((), {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


def latent_files() -> list[str]:
    return paths.list_input_files((".latent",))


class LoadLatent(Node):
    type = "LoadLatent"
    display_name = "Load Latent"
    category = "_for_testing"
    determinism = Determinism.VOLATILE
    inputs = (Input("latent", "COMBO", options=latent_files),)
    outputs = (Output("LATENT"),)

    @classmethod
    def fingerprint(cls, latent: str) -> str:
        return input_fingerprint(latent)

    def run(self, ctx: Any, latent: str) -> tuple[Any, ...]:
        from safetensors.torch import load_file

        data = load_file(str(paths.resolve_within(paths.FOLDERS.input, latent)))
        scale = 1.0 if "latent_format_version_0" in data else 1.0 / 0.18215
        return ({"samples": data["latent_tensor"].float() * scale},)


NODES = (EmptyLatentImage, LatentUpscale, LatentUpscaleBy, SaveLatent, LoadLatent)
