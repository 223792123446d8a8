"""Model loaders."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from executor.schema import Determinism, Input, Node, Output

from . import devices, models, paths


def checkpoint_names() -> list[str]:
    # The embedded tiny models are always offered: they are built on first use.
    return sorted({*paths.list_models("checkpoints"), *models.TINY_CHECKPOINTS})


def model_file_identity(path: Path) -> str:
    """What a cached model's signature holds about its file: resolved path, size, modification time and, for
    .safetensors, a digest of the header (every tensor's name, dtype, shape and offsets). Hashing all the
    weights would cost seconds per prompt for a multi-GB file; a rewrite changes the size or mtime, and a file
    swapped under the same name almost always its header."""
    st = path.stat()
    parts = [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            parts.append(hashlib.sha256(f.read(min(n, 100 << 20))).hexdigest())
    return "|".join(parts)


def _checkpoint_path(ckpt_name: str) -> Path | None:
    path = paths.find_model("checkpoints", ckpt_name)
    if path is None and ckpt_name in models.TINY_CHECKPOINTS:
        path = models.ensure_default_checkpoint(ckpt_name)
    return path


class CheckpointLoaderSimple(Node):
    type = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = ("Loads an SD1.x, SD2.x, SDXL or SDXL refiner single-file checkpoint (.safetensors; "
                   ".ckpt/.pt only as plain tensors).")
    cache_pool = "models"
    # depends on the world: the file's content and the device/precision policy (see `fingerprint`)
    determinism = Determinism.VOLATILE
    inputs = (Input("ckpt_name", "COMBO", options=checkpoint_names, tooltip="The checkpoint file to load.",
                    missing_hint=paths.missing_model_hint("checkpoints")),)
    outputs = (Output("MODEL", tooltip="The denoising model."), Output("CLIP", tooltip="The text encoder."),
               Output("VAE", tooltip="The image autoencoder."))

    @classmethod
    def fingerprint(cls, ckpt_name: str) -> str:
        path = paths.find_model("checkpoints", ckpt_name)
        if path is None:
            if ckpt_name not in models.TINY_CHECKPOINTS:
                raise FileNotFoundError(ckpt_name)
            return f"tiny:{ckpt_name}|{devices.POLICY.describe()}"  # built from code on first use
        return f"{model_file_identity(path)}|{devices.POLICY.describe()}"

    @classmethod
    def check(cls, ckpt_name: str) -> dict[str, str]:
        """A .safetensors file is detected from its header at validation, so a file Sumi cannot use is a
        validation error naming what it appears to be (pickles are only read when the node runs)."""
        path = paths.find_model("checkpoints", ckpt_name)
        if path is None or path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
            return {}
        from .diffusion.detect import detect
        from .diffusion.reading import CheckpointError, open_checkpoint

        try:
            with open_checkpoint(path) as opened:
                detect(opened.meta)
        except CheckpointError as e:
            e.path = ckpt_name
            return {"ckpt_name": str(e)}
        return {}

    def run(self, ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        path = _checkpoint_path(ckpt_name)
        if path is None:
            raise FileNotFoundError(paths.missing_model_hint("checkpoints")(ckpt_name))
        return models.load(path)


NODES = (CheckpointLoaderSimple,)
