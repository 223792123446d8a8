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


def lora_names() -> list[str]:
    return sorted({*paths.list_models("loras"), *models.TINY_LORAS})


def _lora_path(lora_name: str) -> Path | None:
    path = paths.find_model("loras", lora_name)
    if path is None and lora_name in models.TINY_LORAS:
        path = models.ensure_tiny_lora(lora_name)
    return path


def _lora_fingerprint(lora_name: str) -> str:
    path = paths.find_model("loras", lora_name)
    if path is None:
        if lora_name in models.TINY_LORAS:
            return f"tiny:{lora_name}"
        raise FileNotFoundError(lora_name)
    return model_file_identity(path)


def apply_lora(model: Any, clip: Any, lora_name: str, strength_model: float,
               strength_clip: float) -> tuple[Any, Any]:
    """(MODEL, CLIP) views with the LoRA's patches; the inputs (cached objects) are never changed. Keys that
    reach no weight are logged as "lora key not loaded", as ComfyUI does."""
    from .diffusion import lora

    path = _lora_path(lora_name)
    if path is None:
        raise FileNotFoundError(paths.missing_model_hint("loras")(lora_name))
    modules, extra = lora.parse(lora.read_lora(path))
    applied: set[str] = set()
    if model is not None and strength_model != 0:
        unet = model.unet
        key_map = lora.unet_key_map(dict(unet.named_parameters()), unet.config)
        found, names = lora.patches_for(modules, key_map, dict(unet.named_parameters()), strength_model)
        model, applied = model.clone(patches=model.patches + found), applied | names
    if clip is not None and strength_clip != 0:
        per_encoder = {}
        for name, enc in clip.encoders.items():
            params = dict(enc.model.named_parameters())
            key_map = lora.text_key_map(clip.family, name, params)
            per_encoder[name], names = lora.patches_for(modules, key_map, params, strength_clip,
                                                        lora.TEXT_WEIGHT_DTYPE)
            applied |= names
        clip = clip.with_patches(per_encoder)
    lora.warn_unapplied(lora_name, modules, applied, extra)
    return model, clip


class LoraLoader(Node):
    type = "LoraLoader"
    display_name = "Load LoRA"
    category = "loaders"
    description = ("Applies a LoRA (kohya/A1111, LoCon, diffusers/PEFT names) to the model and the text encoder, "
                   "as patches over the shared weights: the loaded checkpoint itself never changes.")
    determinism = Determinism.VOLATILE  # the LoRA file's content
    inputs = (Input("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Input("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              Input("lora_name", "COMBO", options=lora_names, tooltip="The name of the LoRA.",
                    missing_hint=paths.missing_model_hint("loras")),
              Input("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the diffusion model. This value can be negative."),
              Input("strength_clip", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the CLIP model. This value can be negative."))
    outputs = (Output("MODEL", tooltip="The modified diffusion model."),
               Output("CLIP", tooltip="The modified CLIP model."))

    @classmethod
    def fingerprint(cls, lora_name: str, **_: Any) -> str:
        return _lora_fingerprint(lora_name)

    def run(self, ctx: Any, model: Any, clip: Any, lora_name: str, strength_model: float,
            strength_clip: float) -> tuple[Any, ...]:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        return apply_lora(model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly(Node):
    type = "LoraLoaderModelOnly"
    category = "loaders"
    description = "Applies a LoRA to the diffusion model only."
    determinism = Determinism.VOLATILE
    inputs = (Input("model", "MODEL"),
              Input("lora_name", "COMBO", options=lora_names, missing_hint=paths.missing_model_hint("loras")),
              Input("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01))
    outputs = (Output("MODEL"),)

    @classmethod
    def fingerprint(cls, lora_name: str, **_: Any) -> str:
        return _lora_fingerprint(lora_name)

    def run(self, ctx: Any, model: Any, lora_name: str, strength_model: float) -> tuple[Any, ...]:
        if strength_model == 0:
            return (model,)
        return (apply_lora(model, None, lora_name, strength_model, 0.0)[0],)


NODES = (CheckpointLoaderSimple, LoraLoader, LoraLoaderModelOnly)
