"""Masks: conversions to and from images, inversion, growing, feathering, thresholds, compositing, previews,
and masks loaded from an image's channel. A MASK is a float tensor [B,H,W] (some ComfyUI nodes give [H,W];
every node here accepts both)."""
from __future__ import annotations

import random
import string
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from executor.schema import Determinism, Input, Node, Output, Result

from . import paths
from .image import image_files, save_images
from .latent import MAX_RESOLUTION
from .saving import input_fingerprint

CHANNELS = ["red", "green", "blue", "alpha"]
OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]
PIXELS = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)


class _MaskNode(Node):
    category = "mask"
    python_module = "comfy_extras.nodes_mask"


class ImageToMask(_MaskNode):
    type = "ImageToMask"
    display_name = "Convert Image to Mask"
    inputs = (Input("image", "IMAGE"), Input("channel", "COMBO", options=CHANNELS))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, image: torch.Tensor, channel: str) -> tuple[Any, ...]:
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask: the image has {image.shape[-1]} channels, so no {channel} channel")
        return (image[:, :, :, index],)


class MaskToImage(_MaskNode):
    type = "MaskToImage"
    display_name = "Convert Mask to Image"
    inputs = (Input("mask", "MASK"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, mask: torch.Tensor) -> tuple[Any, ...]:
        return (mask_to_image(mask),)


class SolidMask(_MaskNode):
    type = "SolidMask"
    inputs = (Input("value", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
              Input("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, value: float, width: int, height: int) -> tuple[Any, ...]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(_MaskNode):
    type = "InvertMask"
    inputs = (Input("mask", "MASK"),)
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, mask: torch.Tensor) -> tuple[Any, ...]:
        return (1.0 - mask,)


class ThresholdMask(_MaskNode):
    type = "ThresholdMask"
    inputs = (Input("mask", "MASK"), Input("value", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, mask: torch.Tensor, value: float) -> tuple[Any, ...]:
        return ((mask > value).float(),)


class MaskComposite(_MaskNode):
    type = "MaskComposite"
    description = "Combines source into destination at (x, y); the logic operations round both to 0/1 first."
    inputs = (Input("destination", "MASK"), Input("source", "MASK"), Input("x", "INT", **PIXELS),
              Input("y", "INT", **PIXELS), Input("operation", "COMBO", options=OPERATIONS))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
            operation: str) -> tuple[Any, ...]:
        out = as_batch(destination).clone()
        source = as_batch(source).to(out)
        if source.shape[0] not in (1, out.shape[0]):
            raise ValueError(f"MaskComposite: source has {source.shape[0]} masks, destination {out.shape[0]}; "
                             "they must match (or source must be 1)")
        right, bottom = min(x + source.shape[-1], out.shape[-1]), min(y + source.shape[-2], out.shape[-2])
        if right <= x or bottom <= y:  # the source lies outside the destination
            return (torch.clamp(out, 0.0, 1.0),)
        src = source[:, :bottom - y, :right - x]
        dst = out[:, y:bottom, x:right]
        if operation == "multiply":
            result = dst * src
        elif operation == "add":
            result = dst + src
        elif operation == "subtract":
            result = dst - src
        elif operation in ("and", "or", "xor"):
            fn = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
            result = fn(dst.round().bool(), src.round().bool()).float()
        else:
            raise ValueError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}")
        out[:, y:bottom, x:right] = result
        return (torch.clamp(out, 0.0, 1.0),)


class FeatherMask(_MaskNode):
    type = "FeatherMask"
    description = "Fades the mask linearly towards each edge over the given number of pixels."
    inputs = (Input("mask", "MASK"), *(Input(side, "INT", **PIXELS) for side in ("left", "top", "right", "bottom")))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> tuple[Any, ...]:
        out = as_batch(mask).clone()
        h, w = out.shape[-2], out.shape[-1]
        left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
        for i in range(left):
            out[:, :, i] *= (i + 1.0) / left
        # As ComfyUI: the right and bottom ramps index from -0, so their first factor (1/n) lands on the
        # left column / top row and the outermost right column / bottom row gets 2/n.
        for i in range(right):
            out[:, :, -i] *= (i + 1) / right
        for i in range(top):
            out[:, i, :] *= (i + 1) / top
        for i in range(bottom):
            out[:, -i, :] *= (i + 1) / bottom
        return (out,)


class GrowMask(_MaskNode):
    type = "GrowMask"
    display_name = "Grow Mask"
    description = "Grows (or with a negative value shrinks) the mask by one pixel per step."
    inputs = (Input("mask", "MASK"),
              Input("expand", "INT", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
              Input("tapered_corners", "BOOLEAN", default=True))
    outputs = (Output("MASK"),)

    def run(self, ctx: Any, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[Any, ...]:
        from scipy.ndimage import grey_dilation, grey_erosion

        corner = 0 if tapered_corners else 1  # tapered: a cross per step; otherwise a full 3×3 square
        footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
        grow = grey_erosion if expand < 0 else grey_dilation
        out = []
        for m in as_batch(mask):
            array = m.float().cpu().numpy()
            for _ in range(abs(expand)):
                array = grow(array, footprint=footprint)
            out.append(torch.from_numpy(np.ascontiguousarray(array)))
        return (torch.stack(out, dim=0),)


class MaskPreview(_MaskNode):
    type = "MaskPreview"
    display_name = "Preview Mask"
    description = "Saves the mask as a greyscale image in the temp folder for viewing."
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    inputs = (Input("mask", "MASK"),)

    def run(self, ctx: Any, mask: torch.Tensor) -> Result:
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        return save_images(ctx, mask_to_image(mask), f"ComfyUI_temp_{suffix}", "temp", 4)


class LoadImageMask(Node):
    type = "LoadImageMask"
    display_name = "Load Image (as Mask)"
    category = "mask"
    description = "Loads one channel of an input image as a mask; the alpha channel is inverted (1 = transparent)."
    determinism = Determinism.VOLATILE
    inputs = (Input("image", "COMBO", options=image_files, extra={"image_upload": True},
                    missing_hint=lambda name: f"image {name!r} is not in the input folder {paths.FOLDERS.input}"),
              Input("channel", "COMBO", options=["alpha", "red", "green", "blue"]))
    outputs = (Output("MASK"),)

    @classmethod
    def fingerprint(cls, image: str, **_: Any) -> str:
        return input_fingerprint(image)

    def run(self, ctx: Any, image: str, channel: str) -> tuple[Any, ...]:
        with Image.open(paths.resolve_within(paths.FOLDERS.input, image)) as img:
            frame = ImageOps.exif_transpose(img)
            if frame.getbands() != ("R", "G", "B", "A"):
                if frame.mode == "I":  # 16-bit greyscale
                    frame = frame.point(lambda v: v * (1 / 255))
                frame = frame.convert("RGBA")
            band = channel[0].upper()
            values = torch.from_numpy(np.asarray(frame.getchannel(band), dtype=np.float32) / 255.0)
        return ((1.0 - values if band == "A" else values).unsqueeze(0),)


NODES = (ImageToMask, MaskToImage, SolidMask, InvertMask, ThresholdMask, MaskComposite, FeatherMask, GrowMask,
         MaskPreview, LoadImageMask)
