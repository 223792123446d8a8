"""Images: VAE decode/encode, loading inputs, saving outputs with their workflow in the PNG."""
from __future__ import annotations

import json
import random
import string
import uuid
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from executor.schema import Determinism, Input, Node, Output, Result

from . import formats, paths, provenance
from .saving import input_fingerprint, metadata_chunks, output_slot


class VAEDecode(Node):
    type = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decodes latents into images."
    inputs = (Input("samples", "LATENT", tooltip="The latent to be decoded."),
              Input("vae", "VAE", tooltip="The VAE model used for decoding the latent."))
    outputs = (Output("IMAGE", tooltip="The decoded image."),)

    def run(self, ctx: Any, samples: dict[str, Any], vae: Any) -> tuple[Any, ...]:
        return (vae.decode(samples["samples"]),)


class VAEEncode(Node):
    type = "VAEEncode"
    display_name = "VAE Encode"
    category = "latent"
    description = "Encodes images into latents (alpha dropped; cropped to a multiple of 8)."
    inputs = (Input("pixels", "IMAGE"), Input("vae", "VAE"))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, pixels: torch.Tensor, vae: Any) -> tuple[Any, ...]:
        h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        return ({"samples": vae.encode(pixels[:, top:top + h, left:left + w, :])},)


def image_files() -> list[str]:
    return paths.list_input_files()


def _input_path(name: str) -> Any:
    return paths.resolve_within(paths.FOLDERS.input, name)


class LoadImage(Node):
    type = "LoadImage"
    display_name = "Load Image"
    category = "image"
    description = "Loads an image from the input folder; its mask is 1 - alpha."
    determinism = Determinism.VOLATILE
    inputs = (Input("image", "COMBO", options=image_files, extra={"image_upload": True},
                    missing_hint=lambda name: f"image {name!r} is not in the input folder {paths.FOLDERS.input}"),)
    outputs = (Output("IMAGE"), Output("MASK"))

    @classmethod
    def fingerprint(cls, image: str) -> str:
        return input_fingerprint(image)

    def run(self, ctx: Any, image: str) -> tuple[Any, ...]:
        images, masks = [], []
        with Image.open(_input_path(image)) as img:
            for frame in ImageSequence.Iterator(img):
                frame = ImageOps.exif_transpose(frame)
                if frame.mode == "I":  # 16-bit greyscale
                    frame = frame.point(lambda v: v * (1 / 255))
                if frame.mode == "P" and "transparency" in frame.info:  # palette transparency is alpha too
                    frame = frame.convert("RGBA")
                rgb = torch.from_numpy(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)
                if images and rgb.shape != images[0].shape:
                    continue  # frames of another size cannot share a batch
                images.append(rgb)
                if "A" in frame.getbands():
                    alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                    masks.append(1.0 - torch.from_numpy(alpha))
                else:
                    masks.append(torch.zeros((64, 64)))
        return torch.stack(images), torch.stack(masks)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE → uint8 the way ComfyUI saves: 255·x clipped, then truncated (not rounded)."""
    return np.clip(255.0 * images.float().cpu().numpy(), 0, 255).astype(np.uint8)


def provenance_chunks(ctx: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """ComfyUI's `prompt`/`workflow` chunks, the workflow stamped with its `models` manifest and Sumi's format
    version, and Sumi's provenance record (model hashes, versions, device, precision)."""
    extra = dict(ctx.extra_pnginfo or {})
    workflow = extra.get("workflow")
    known = workflow.get("models") if isinstance(workflow, dict) else None
    record = provenance.record(ctx.prompt or {}, known if isinstance(known, list) else None)
    if isinstance(workflow, dict):
        extra["workflow"] = formats.stamp({**workflow, "models": record["models"]})
    return metadata_chunks(ctx.prompt, extra), record


def save_images(ctx: Any, images: torch.Tensor, prefix: str, kind: str, compress_level: int) -> Result:
    root = paths.FOLDERS.output if kind == "output" else paths.FOLDERS.temp
    folder, stem, subfolder, counter = output_slot(root, prefix, "png", images.shape[2], images.shape[1])
    chunks, record = provenance_chunks(ctx)
    saved = []
    for index, pixels in enumerate(to_uint8(images)):
        info = PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)
        # Which node and batch index wrote this file: `run --verify` compares against that output.
        info.add_text("sumi", json.dumps({**record, "node": ctx.node_id, "batch_index": index}))
        name = f"{stem.replace('%batch_num%', str(index))}_{counter:05}_.png"
        Image.fromarray(pixels).save(folder / name, pnginfo=info, compress_level=compress_level)
        saved.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return Result((), {"images": saved})


class SaveImage(Node):
    type = "SaveImage"
    display_name = "Save Image"
    category = "image"
    description = "Saves images to the output folder, with the workflow in the PNG."
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    inputs = (Input("images", "IMAGE", tooltip="The images to save."),
              Input("filename_prefix", "STRING", default="ComfyUI",
                    tooltip="The prefix for the file to save; may contain subfolders and %width%/%height%."))

    def run(self, ctx: Any, images: torch.Tensor, filename_prefix: str) -> Result:
        return save_images(ctx, images, filename_prefix, "output", 4)


class SaveImageWebsocket(Node):
    type = "SaveImageWebsocket"
    display_name = "Save Image (Websocket)"
    category = "api node/image"
    description = "Sends each image to the client that queued the prompt as a binary websocket frame (PNG), " \
                  "saving nothing: for API clients that read their outputs from the websocket."
    output_node = True
    determinism = Determinism.VOLATILE  # an output sent, not stored: every run must send it again
    inputs = (Input("images", "IMAGE", tooltip="The images to send."),)

    @classmethod
    def fingerprint(cls, **constants: Any) -> str:
        return uuid.uuid4().hex

    def run(self, ctx: Any, images: torch.Tensor) -> Result:
        batch = to_uint8(images)
        for index, pixels in enumerate(batch):
            ctx.progress(index + 1, len(batch))
            ctx.send_image(Image.fromarray(pixels), "PNG")
        return Result((), None)


class PreviewImage(Node):
    type = "PreviewImage"
    display_name = "Preview Image"
    category = "image"
    description = "Saves images to the temp folder for viewing."
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    inputs = (Input("images", "IMAGE"),)

    def run(self, ctx: Any, images: torch.Tensor) -> Result:
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        return save_images(ctx, images, f"ComfyUI_temp_{suffix}", "temp", 1)


NODES = (VAEDecode, VAEEncode, LoadImage, SaveImage, SaveImageWebsocket, PreviewImage)
