"""Image tools: invert, crop, batch, blend, composite, empty images, sizes, scaling, outpaint padding, Canny.

ComfyUI's class names, inputs, defaults, ranges and behaviour (`../shared/reference/comfyui.md` §5).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from executor.schema import Input, Node, Output

from .canny import canny
from .compositing import CROP_METHODS, IMAGE_UPSCALE_METHODS, alpha_match, paste, resize_image
from .latent import MAX_RESOLUTION

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


class ImageInvert(Node):
    type = "ImageInvert"
    display_name = "Invert Image"
    category = "image"
    inputs = (Input("image", "IMAGE"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image: torch.Tensor) -> tuple[Any, ...]:
        return (1.0 - image,)


class ImageCrop(Node):
    type = "ImageCrop"
    display_name = "Image Crop"
    category = "image/transform"
    python_module = "comfy_extras.nodes_images"
    inputs = (Input("image", "IMAGE"),
              Input("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple[Any, ...]:
        # A corner past the edge moves onto the last row/column, so the crop is never empty.
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


class ImageBatch(Node):
    type = "ImageBatch"
    display_name = "Batch Images"
    category = "image"
    inputs = (Input("image1", "IMAGE"), Input("image2", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image1: torch.Tensor, image2: torch.Tensor) -> tuple[Any, ...]:
        if image1.shape[-1] != image2.shape[-1]:  # RGB with RGBA: the RGB one gets an opaque alpha
            if image1.shape[-1] > image2.shape[-1]:
                image2 = torch.nn.functional.pad(image2, (0, 1), value=1.0)
            else:
                image1 = torch.nn.functional.pad(image1, (0, 1), value=1.0)
        if image1.shape[1:] != image2.shape[1:]:  # image2 is fitted to image1: centre crop, then bilinear
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2.to(image1)), dim=0),)


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend modes of ImageBlend (W3C compositing formulas; `difference` is signed, as in ComfyUI)."""
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_soft_light_g(a) - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")


class ImageBlend(Node):
    type = "ImageBlend"
    category = "image/postprocessing"
    python_module = "comfy_extras.nodes_post_processing"
    description = "image1 · (1 − blend_factor) + mode(image1, image2) · blend_factor, clamped to 0..1."
    inputs = (Input("image1", "IMAGE"), Input("image2", "IMAGE"),
              Input("blend_factor", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01),
              Input("blend_mode", "COMBO", options=BLEND_MODES))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float,
            blend_mode: str) -> tuple[Any, ...]:
        image1, image2 = alpha_match(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        mixed = image1 * (1 - blend_factor) + blend(image1, image2, blend_mode) * blend_factor
        return (torch.clamp(mixed, 0, 1),)


class ImageCompositeMasked(Node):
    type = "ImageCompositeMasked"
    category = "image"
    python_module = "comfy_extras.nodes_mask"
    description = "Pastes source into destination at (x, y), weighted by an optional mask."
    inputs = (Input("destination", "IMAGE"), Input("source", "IMAGE"),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
              Input("resize_source", "BOOLEAN", default=False),
              Input("mask", "MASK", optional=True))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
            resize_source: bool, mask: torch.Tensor | None = None) -> tuple[Any, ...]:
        destination, source = alpha_match(destination, source)
        out = paste(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


class EmptyImage(Node):
    type = "EmptyImage"
    category = "image"
    inputs = (Input("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("batch_size", "INT", default=1, min=1, max=4096),
              Input("color", "INT", default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"}))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, width: int, height: int, batch_size: int, color: int) -> tuple[Any, ...]:
        shape = [batch_size, height, width, 1]
        channels = [torch.full(shape, ((color >> shift) & 0xFF) / 0xFF) for shift in (16, 8, 0)]
        return (torch.cat(channels, dim=-1),)


class GetImageSize(Node):
    type = "GetImageSize"
    display_name = "Get Image Size"
    category = "image"
    python_module = "comfy_extras.nodes_images"
    description = "The width, height and batch size of an image."
    hidden = ("unique_id",)
    inputs = (Input("image", "IMAGE"),)
    outputs = (Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size"))

    def run(self, ctx: Any, image: torch.Tensor) -> tuple[Any, ...]:
        return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])


class ImageScale(Node):
    type = "ImageScale"
    display_name = "Upscale Image"
    category = "image/upscaling"
    inputs = (Input("image", "IMAGE"), Input("upscale_method", "COMBO", options=IMAGE_UPSCALE_METHODS),
              Input("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              Input("crop", "COMBO", options=CROP_METHODS))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image: torch.Tensor, upscale_method: str, width: int, height: int,
            crop: str) -> tuple[Any, ...]:
        if width == 0 and height == 0:
            return (image,)
        if width == 0:  # 0 keeps the aspect ratio
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    type = "ImageScaleBy"
    display_name = "Upscale Image By"
    category = "image/upscaling"
    inputs = (Input("image", "IMAGE"), Input("upscale_method", "COMBO", options=IMAGE_UPSCALE_METHODS),
              Input("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[Any, ...]:
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (resize_image(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    type = "ImageScaleToTotalPixels"
    display_name = "Scale Image to Total Pixels"
    category = "image/upscaling"
    python_module = "comfy_extras.nodes_post_processing"
    description = "Scales to about megapixels × 1024² pixels, keeping the aspect ratio."
    # resolution_steps came after ComfyUI 0.3.64; optional here so workflows from before and after both run.
    inputs = (Input("image", "IMAGE"), Input("upscale_method", "COMBO", options=IMAGE_UPSCALE_METHODS),
              Input("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
              Input("resolution_steps", "INT", default=1, min=1, max=256, optional=True))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, image: torch.Tensor, upscale_method: str, megapixels: float,
            resolution_steps: int | None = None) -> tuple[Any, ...]:
        h, w = image.shape[1], image.shape[2]
        if resolution_steps is None:  # 0.3.64: the pixel budget is truncated to an integer
            scale = math.sqrt(int(megapixels * 1024 * 1024) / (w * h))
            width, height = round(w * scale), round(h * scale)
        else:  # later versions: each side rounded to a multiple of resolution_steps
            scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
            width = round(w * scale / resolution_steps) * resolution_steps
            height = round(h * scale / resolution_steps) * resolution_steps
        return (resize_image(image, int(width), int(height), upscale_method),)


class ImagePadForOutpaint(Node):
    type = "ImagePadForOutpaint"
    display_name = "Pad Image for Outpainting"
    category = "image"
    description = "Adds grey borders and a mask that is 1 on them, fading into the image over `feathering` px."
    inputs = (Input("image", "IMAGE"),
              *(Input(side, "INT", default=0, min=0, max=MAX_RESOLUTION, step=8)
                for side in ("left", "top", "right", "bottom")),
              Input("feathering", "INT", default=40, min=0, max=MAX_RESOLUTION, step=1))
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx: Any, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
            feathering: int) -> tuple[Any, ...]:
        b, h, w, c = image.shape
        padded = torch.ones((b, h + top + bottom, w + left + right, c), dtype=torch.float32) * 0.5
        padded[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
            rows = torch.arange(h, dtype=torch.int64)[:, None]
            cols = torch.arange(w, dtype=torch.int64)[None, :]
            # Distance to each padded side (a side without padding never counts as near).
            d = torch.minimum(torch.minimum(rows if top else torch.full_like(rows, h),
                                            h - rows if bottom else torch.full_like(rows, h)),
                              torch.minimum(cols if left else torch.full_like(cols, w),
                                            w - cols if right else torch.full_like(cols, w)))
            ramp = (feathering - d).double() / feathering  # ComfyUI divides and squares in double precision
            inner = torch.where(d < feathering, ramp * ramp, 0.0).float()
        mask[top:top + h, left:left + w] = inner
        return padded, mask


class Canny(Node):
    type = "Canny"
    category = "image/preprocessors"
    python_module = "comfy_extras.nodes_canny"
    description = "Canny edges (white on black, 3 channels), e.g. for a Canny ControlNet."
    inputs = (Input("image", "IMAGE"),
              Input("low_threshold", "FLOAT", default=0.4, min=0.01, max=0.99, step=0.01),
              Input("high_threshold", "FLOAT", default=0.8, min=0.01, max=0.99, step=0.01))
    outputs = (Output("IMAGE"),)

    @classmethod
    def check(cls, **constants: Any) -> dict[str, str]:
        low, high = constants.get("low_threshold"), constants.get("high_threshold")
        if low is not None and high is not None and low > high:
            return {"low_threshold": f"low_threshold ({low}) must not be above high_threshold ({high})"}
        return {}

    def run(self, ctx: Any, image: torch.Tensor, low_threshold: float, high_threshold: float) -> tuple[Any, ...]:
        if low_threshold > high_threshold:  # linked values are not seen by `check`
            raise ValueError(f"low_threshold ({low_threshold}) must not be above high_threshold ({high_threshold})")
        edges = canny(image[..., :3].movedim(-1, 1), low_threshold, high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)


NODES = (ImageInvert, ImageCrop, ImageBatch, ImageBlend, ImageCompositeMasked, EmptyImage, GetImageSize,
         ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImagePadForOutpaint, Canny)
