"""Upscale models (UPSCALE_MODEL) through spandrel, and ComfyUI's tiled upscaling with them.

Files are read by Sumi (`.safetensors` tensor by tensor, pickles only through `torch.load(weights_only=True)`;
spandrel's own `.pth` unpickler and its TorchScript path for `.pt` are never used) and handed to spandrel as a
state dict; spandrel finds the architecture (ESRGAN/RealESRGAN, SwinIR, HAT, DAT, …) from names and shapes.

Tiling (`tiled_scale`) follows ComfyUI's `ImageUpscaleWithModel` (facts in shared/reference/parity-next/README.md,
"ESRGAN upscaler"): tiles of 512 px overlapping by 32; an image that fits in one tile runs whole; otherwise tiles
start every 512 − 32 px along each axis (the last one shorter), each tile's output is weighted by a linear
feather of scale·overlap px at both ends of each axis, and the weighted outputs are summed and divided by the
summed weights. On out-of-memory the tile size halves, down to 128. spandrel offers no tiling of its own
(`ModelTiling` only says whether a model tolerates it).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .diffusion.reading import PICKLE_SUFFIXES, CheckpointError, load_pickle, open_checkpoint

SUPPORTED_TEXT = ("single-image upscale models that spandrel recognises (ESRGAN/RealESRGAN, SwinIR, HAT, DAT, "
                  "SPAN, …) as .safetensors, or .pth/.pt/.ckpt/.bin holding plain tensors")
MASKED_ARCHITECTURES = {"LaMa"}  # spandrel loads these as inpainting (image + mask) models
SWINIR_PROBE = "module.layers.0.residual_group.blocks.0.norm1.weight"  # SwinIR files saved from DataParallel
TILE, OVERLAP, MIN_TILE = 512, 32, 128


@dataclass(frozen=True)
class UpscaleModel:
    """UPSCALE_MODEL: a spandrel single-image model on its device and dtype."""

    descriptor: Any  # spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        """[1, C, h, w] in 0..1 → [1, C', h·scale, w·scale] float32 on the CPU (spandrel pads to the model's
        size requirements, crops back and clamps to 0..1)."""
        out = self.descriptor(tile.to(self.device, self.dtype))
        return out.to("cpu", torch.float32)


def _error(message: str, path: Path | str | None = None, **kw: Any) -> CheckpointError:
    return CheckpointError(message, path=path, supported_text=SUPPORTED_TEXT, **kw)


def _canonical(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict inside a file's object (spandrel's unwrapping of params_ema / state_dict / … and of
    common prefixes; ComfyUI's `module.` rule for SwinIR), tensors only."""
    from spandrel import canonicalize_state_dict

    if not isinstance(obj, dict):
        raise _error(f"holds a {type(obj).__name__}, not a state dict", path, reason="unreadable")
    sd = canonicalize_state_dict({k: v for k, v in obj.items() if isinstance(k, str)})
    if SWINIR_PROBE in sd:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def read_state_dict(path: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """The upscaler's tensors; `meta` gives names and shapes only where the format allows (.safetensors)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _canonical(load_pickle(path), path)
    with open_checkpoint(path) as source:
        if meta:
            return _canonical(dict(source.meta), path)
        return _canonical({k: source.read(k) for k in source.order()}, path)


def _architecture(sd: Mapping[str, torch.Tensor]) -> Any | None:
    """The spandrel architecture whose detection accepts these names and shapes, or None."""
    from spandrel import MAIN_REGISTRY

    for support in MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(sd):
                return support.architecture
        except Exception:  # a detector that reads values fails on meta tensors: it is not this architecture
            continue
    return None


def _what_else(sd: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(what a file spandrel does not recognise appears to be, where it belongs)."""
    from .diffusion import detect as d

    keys = list(sd)
    if not keys:
        return "no tensors at all", ""
    foreign = d.foreign_kind(keys)
    if foreign is not None:
        return foreign[0], foreign[1]
    tries: tuple[tuple[Callable[[Any], Any], Callable[[Any], str], str], ...] = (
        (d.detect, lambda info: f"an {d.LABELS[info.family]} checkpoint", "load it with Load Checkpoint "
                                                                         "(models/checkpoints)"),
        (d.detect_diffusion_model, lambda r: f"an {d.LABELS[r[0].family]} diffusion model (UNet only)",
         "load it with Load Diffusion Model (models/diffusion_models)"),
        (d.detect_vae, lambda _: "a VAE", "load it with Load VAE (models/vae)"),
        (d.detect_text_encoder, lambda _: "a CLIP text encoder", "load it with Load CLIP (models/text_encoders)"),
    )
    for detector, label, hint in tries:
        try:
            return label(detector(sd)), hint
        except Exception:  # CheckpointError, or a detector meeting names it does not expect
            continue
    return f"{len(keys)} tensors of no architecture spandrel knows, e.g. {sorted(keys)[:3]}", ""


def identify(path: Path) -> str:
    """The architecture name of an upscaler file, from names and shapes only (no model is built); a
    CheckpointError saying what the file appears to be when it is not a single-image model spandrel knows."""
    sd = read_state_dict(path, meta=True)
    arch = _architecture(sd)
    if arch is None:
        what, hint = _what_else(sd)
        raise _error("not an upscale model spandrel recognises", path, detected=what, hint=hint)
    if str(arch.id) in MASKED_ARCHITECTURES:
        raise _error(f"a {arch.name} inpainting model (it takes an image and a mask)", path,
                     detected=str(arch.name), hint="ImageUpscaleWithModel takes single-image models")
    return str(arch.name)


def load_upscale_model(path: Path, device: torch.device, precision: str = "auto") -> UpscaleModel:
    """Build the spandrel model of a file on `device`. Precision auto runs fp32, as ComfyUI does; fp16/bf16 are
    used where spandrel says the architecture supports them, else fp32."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    sd = read_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(sd)
    except UnsupportedModelError:
        what, hint = _what_else(sd)
        raise _error("not an upscale model spandrel recognises", path, detected=what, hint=hint) from None
    except Exception as e:  # detected, but the tensors do not build that architecture
        arch = _architecture(sd)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise _error(f"spandrel took it for {getattr(arch, 'name', 'a known architecture')} but its tensors do not "
                     f"build that architecture", path, reason="mismatch", detected=f"{type(e).__name__}: {first}",
                     hint="the file may be damaged or a variant spandrel does not support") from e
    if not isinstance(descriptor, ImageModelDescriptor):
        raise _error(f"a {descriptor.architecture.name} model that is not a single-image model", path,
                     detected=type(descriptor).__name__, hint="ImageUpscaleWithModel takes single-image models")
    dtype = {"fp16": torch.float16 if descriptor.supports_half else torch.float32,
             "bf16": torch.bfloat16 if descriptor.supports_bfloat16 else torch.float32}.get(precision, torch.float32)
    descriptor.eval().to(device=device, dtype=dtype)
    for p in descriptor.model.parameters():
        p.requires_grad_(False)
    return UpscaleModel(descriptor, device, dtype)


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """Tiles `tiled_scale` runs for one image (1 when it fits in one tile)."""
    if height <= tile and width <= tile:
        return 1
    return len(_starts(height, tile, overlap)) * len(_starts(width, tile, overlap))


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    return [0] if size <= tile else list(range(0, size - overlap, tile - overlap))


def _feather(length: int, width: int) -> torch.Tensor:
    """Weights along one axis of a tile's output: linear ramps (1/width … 1) over `width` px at both ends
    (multiplied where they meet); none when the tile is not longer than the ramp."""
    w = torch.ones(length)
    if width >= length:
        return w
    ramp = torch.arange(1, width + 1, dtype=torch.float32) / width
    w[:width] *= ramp
    w[length - width:] *= ramp.flip(0)
    return w


def tiled_scale(image: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: int, out_channels: int,
                tile: int = TILE, overlap: int = OVERLAP, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """`fn` ([1,C,h,w] → [1,C',h·s,w·s]) over `image` [B,C,H,W] in overlapping tiles, blended by feathered
    weights; [B, C', H·s, W·s] float32 on the CPU. `on_tile` is called after each tile."""
    b, _, h, w = image.shape
    out = torch.empty((b, out_channels, round(h * scale), round(w * scale)))
    for i in range(b):
        one = image[i:i + 1]
        if h <= tile and w <= tile:
            out[i:i + 1] = fn(one)
            if on_tile:
                on_tile()
            continue
        acc = torch.zeros((1, out_channels, *out.shape[2:]))
        weight = torch.zeros_like(acc)
        for y, x in itertools.product(_starts(h, tile, overlap), _starts(w, tile, overlap)):
            part = fn(one[:, :, y:y + min(tile, h - y), x:x + min(tile, w - x)])
            ph, pw = part.shape[2:]
            mask = (_feather(ph, round(overlap * scale))[:, None] * _feather(pw, round(overlap * scale))[None, :])
            oy, ox = round(y * scale), round(x * scale)
            acc[:, :, oy:oy + ph, ox:ox + pw] += part * mask
            weight[:, :, oy:oy + ph, ox:ox + pw] += mask
            if on_tile:
                on_tile()
        out[i:i + 1] = acc / weight
    return out


def upscale(model: UpscaleModel, image: torch.Tensor, progress: Callable[[int, int], None] | None = None,
            tile: int | None = None, overlap: int | None = None) -> torch.Tensor:
    """IMAGE [B,H,W,C] → IMAGE [B,H·s,W·s,C'] in 0..1 on the CPU, tiled (TILE, OVERLAP unless given); the tile
    halves on out-of-memory (down to MIN_TILE, then the error stands). `progress(done, total)` is called per tile,
    counting afresh after a halving."""
    tile, overlap = tile or TILE, OVERLAP if overlap is None else overlap
    channels = model.descriptor.input_channels
    if image.shape[-1] != channels:
        raise ValueError(f"this {model.architecture} model takes {channels}-channel images; the image has "
                         f"{image.shape[-1]} channels")
    pixels = image.movedim(-1, 1)
    while True:
        total = image.shape[0] * tile_count(pixels.shape[2], pixels.shape[3], tile, overlap)
        count = itertools.count(1)
        on_tile = (lambda c=count, t=total: progress(next(c), t)) if progress else None
        try:
            with torch.inference_mode():
                out = tiled_scale(pixels, model, model.scale, model.descriptor.output_channels, tile, overlap,
                                  on_tile)
            break
        except torch.OutOfMemoryError:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            tile //= 2
            if tile < MIN_TILE:
                raise
    return out.movedim(1, -1).clamp(0.0, 1.0)
