"""Upscale models: UpscaleModelLoader and ImageUpscaleWithModel, with ComfyUI's names, inputs and behaviour."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar

from executor.schema import Determinism, Input, Node, Output

from . import devices, paths
from .loaders import model_file_identity, model_identity, model_names, model_path


def upscale_model_names() -> list[str]:
    return model_names("upscale_models")


def _policy() -> str:
    """What of the device policy changes an upscaler's results: the device and the precision asked for."""
    return f"{devices.POLICY.describe()}|precision={devices.POLICY.precision}"


@functools.lru_cache(maxsize=64)
def _check_file(identity: str, path: Path, name: str) -> str | None:
    """The validation message for one file version (keyed by its identity: path, size, mtime), or None."""
    from .diffusion.reading import CheckpointError
    from .upscaler import identify

    try:
        identify(path)
    except CheckpointError as e:
        e.path = name
        return str(e)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:  # spandrel tripped over the file
        return f"{name}: not an upscale model Sumi can read ({type(e).__name__}: {e})"
    return None


class UpscaleModelLoader(Node):
    type = "UpscaleModelLoader"
    display_name = "Load Upscale Model"
    category = "loaders"
    description = ("Loads an upscale model (ESRGAN/RealESRGAN, SwinIR, HAT, DAT, … whatever spandrel "
                   "recognises) from models/upscale_models.")
    model_files: ClassVar[dict[str, str]] = {"model_name": "upscale_models"}  # read by nodes.manifest
    cache_pool = "models"
    determinism = Determinism.VOLATILE  # the file's content and the device/precision policy
    inputs = (Input("model_name", "COMBO", options=upscale_model_names,
                    missing_hint=paths.missing_model_hint("upscale_models")),)
    outputs = (Output("UPSCALE_MODEL"),)

    @classmethod
    def fingerprint(cls, model_name: str) -> str:
        return f"{model_identity('upscale_models', model_name)}|{_policy()}"

    @classmethod
    def check(cls, model_name: str) -> dict[str, str]:
        """The file is identified from names and shapes at validation, so one spandrel does not know (or an SD
        checkpoint dropped here) is a validation error saying what it appears to be."""
        path = paths.find_model("upscale_models", model_name)
        if path is None or not os.access(path, os.R_OK):
            return {}
        message = _check_file(model_file_identity(path), path, model_name)
        return {"model_name": message} if message else {}

    def run(self, ctx: Any, model_name: str) -> tuple[Any, ...]:
        from .upscaler import load_upscale_model

        path = model_path("upscale_models", model_name)
        policy = devices.POLICY
        return (load_upscale_model(path, policy.device, policy.precision),)


class ImageUpscaleWithModel(Node):
    type = "ImageUpscaleWithModel"
    display_name = "Upscale Image (using Model)"
    category = "image/upscaling"
    description = ("Upscales an image with an upscale model, in 512 px tiles overlapping by 32 (halved on "
                   "out-of-memory), blended with feathered edges.")
    inputs = (Input("upscale_model", "UPSCALE_MODEL"), Input("image", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx: Any, upscale_model: Any, image: Any) -> tuple[Any, ...]:
        from .upscaler import upscale

        return (upscale(upscale_model, image, lambda done, total: ctx.progress(done, total)),)


NODES = (UpscaleModelLoader, ImageUpscaleWithModel)
