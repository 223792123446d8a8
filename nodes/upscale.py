"""Upscale models: UpscaleModelLoader and ImageUpscaleWithModel, with ComfyUI's names, inputs and behaviour."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar

from executor.schema import Determinism, Input, Node, Output

from . import devices, paths
from .loaders import model_file_identity

# the embedded tiny upscaler, built on first use: an ESRGAN ×4 in RealESRGAN_x4plus's layout, a few blocks wide
TINY_UPSCALE_MODELS = {"sumi_tiny_esrgan_x4.pth": "tiny"}


def upscale_model_names() -> list[str]:
    return sorted({*paths.list_models("upscale_models"), *TINY_UPSCALE_MODELS})


def ensure_tiny_upscale_model(name: str) -> Path:
    """Build one of `TINY_UPSCALE_MODELS` into models/upscale_models on first use."""
    from .upscaler_fixtures import TINY, write_esrgan

    return paths.build_once("upscale_models", name, lambda tmp: write_esrgan(tmp, **TINY))


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
        path = paths.find_model("upscale_models", model_name)
        if path is None:
            if model_name not in TINY_UPSCALE_MODELS:
                raise FileNotFoundError(model_name)
            return f"tiny:{model_name}|{_policy()}"  # built from code on first use
        return f"{model_file_identity(path)}|{_policy()}"

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

        path = paths.find_model("upscale_models", model_name)
        if path is None and model_name in TINY_UPSCALE_MODELS:
            path = ensure_tiny_upscale_model(model_name)
        if path is None:
            raise FileNotFoundError(paths.missing_model_hint("upscale_models")(model_name))
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
