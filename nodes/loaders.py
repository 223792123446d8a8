"""Model loaders."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from executor.schema import Determinism, Input, Node, Output

from . import devices, models, paths


def model_names(kind: str) -> list[str]:
    """A loader's options: the files of its model folders and the embedded tiny ones (built on first use)."""
    return sorted({*paths.list_models(kind), *models.tiny_files(kind)})


def model_path(kind: str, name: str) -> Path:
    """The file a loader reads: found in the folders, else an embedded tiny one built now; else a
    FileNotFoundError that names the folders searched."""
    path = paths.find_model(kind, name)
    if path is None and name in (tiny := models.tiny_files(kind)):
        path = tiny[name](name)
    if path is None:
        raise FileNotFoundError(paths.missing_model_hint(kind)(name))
    return path


def model_identity(kind: str, name: str) -> str:
    """What a loader's cache signature holds about its file (`model_file_identity`); `tiny:NAME` for an embedded
    tiny file not built yet (it is built from code, the same every time)."""
    path = paths.find_model(kind, name)
    if path is None and name in models.tiny_files(kind):
        return f"tiny:{name}"
    if path is None:
        raise FileNotFoundError(name)
    return model_file_identity(path)


def checkpoint_names() -> list[str]:
    return model_names("checkpoints")


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


class CheckpointLoaderSimple(Node):
    type = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = ("Loads an SD1.x, SD2.x, SDXL or SDXL refiner single-file checkpoint (.safetensors; "
                   ".ckpt/.pt only as plain tensors).")
    cache_pool = "models"
    # This input names a model file in the `checkpoints` folders (read by nodes.manifest).
    model_files: ClassVar[dict[str, str]] = {"ckpt_name": "checkpoints"}
    # depends on the world: the file's content and the device/precision policy (see `fingerprint`)
    determinism = Determinism.VOLATILE
    inputs = (Input("ckpt_name", "COMBO", options=checkpoint_names, tooltip="The checkpoint file to load.",
                    missing_hint=paths.missing_model_hint("checkpoints")),)
    outputs = (Output("MODEL", tooltip="The denoising model."), Output("CLIP", tooltip="The text encoder."),
               Output("VAE", tooltip="The image autoencoder."))

    @classmethod
    def fingerprint(cls, ckpt_name: str) -> str:
        return f"{model_identity('checkpoints', ckpt_name)}|{devices.POLICY.describe()}"

    @classmethod
    def check(cls, ckpt_name: str) -> dict[str, str]:
        """A .safetensors file is detected from its header at validation, so a file Sumi cannot use is a
        validation error naming what it appears to be (pickles are only read when the node runs)."""
        path = paths.find_model("checkpoints", ckpt_name)
        if path is None or path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
            return {}
        from .diffusion.detect import detect

        problem = detection_problem(path, ckpt_name, detect)
        return {"ckpt_name": problem} if problem else {}

    def run(self, ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        return models.load(model_path("checkpoints", ckpt_name))


def lora_names() -> list[str]:
    return model_names("loras")


def apply_lora(model: Any, clip: Any, lora_name: str, strength_model: float,
               strength_clip: float) -> tuple[Any, Any]:
    """(MODEL, CLIP) views with the LoRA's patches; the inputs (cached objects) are never changed. Keys that
    reach no weight are logged as "lora key not loaded", as ComfyUI does."""
    from .diffusion import lora

    path = model_path("loras", lora_name)
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
    model_files: ClassVar[dict[str, str]] = {"lora_name": "loras"}  # read by nodes.manifest
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
        return model_identity("loras", lora_name)

    def run(self, ctx: Any, model: Any, clip: Any, lora_name: str, strength_model: float,
            strength_clip: float) -> tuple[Any, ...]:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        return apply_lora(model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly(Node):
    type = "LoraLoaderModelOnly"
    model_files: ClassVar[dict[str, str]] = {"lora_name": "loras"}  # read by nodes.manifest
    category = "loaders"
    description = "Applies a LoRA to the diffusion model only."
    determinism = Determinism.VOLATILE
    inputs = (Input("model", "MODEL"),
              Input("lora_name", "COMBO", options=lora_names, missing_hint=paths.missing_model_hint("loras")),
              Input("strength_model", "FLOAT", default=1.0, min=-100.0, max=100.0, step=0.01))
    outputs = (Output("MODEL"),)

    @classmethod
    def fingerprint(cls, lora_name: str, **_: Any) -> str:
        return model_identity("loras", lora_name)

    def run(self, ctx: Any, model: Any, lora_name: str, strength_model: float) -> tuple[Any, ...]:
        if strength_model == 0:
            return (model,)
        return (apply_lora(model, None, lora_name, strength_model, 0.0)[0],)


# what each split loader loads, for its validation errors' "supported:" part (checkpoints have their own)
SPLIT_SUPPORTED = {
    "detect_diffusion_model": "SD1.x, SD2.x, SDXL and SDXL refiner diffusion models (the UNet alone, original "
                              "layout, bare or under model.diffusion_model.; fp16/bf16/fp32/fp8)",
    "detect_text_encoder": "CLIP-L, OpenCLIP-H and OpenCLIP-bigG text encoders (transformers' or OpenCLIP's layout)",
    "detect_vae": "KL autoencoders (VAEs) of SD1.x, SD2.x and SDXL in the original layout; TAESD through the "
                  "taesd / taesdxl names"}


def detection_problem(path: Path, shown: str, detect: Callable[[Any], object], supported: str | None = None) -> str:
    """'' when `detect` accepts the names and shapes of a .safetensors file, else the message of its validation
    error (`supported` replacing what the error says loads). A detector that trips over a layout it half
    recognises (a tensor missing, an odd index) says so rather than raising."""
    from .diffusion.reading import CheckpointError, open_checkpoint

    try:
        with open_checkpoint(path) as opened:
            detect(opened.meta)
    except CheckpointError as e:
        e.path = shown
        if supported:
            e.supported_text = supported
        return str(e)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
        return (f"{shown}: its tensors look like a known layout but do not fit it ({type(e).__name__}: {e}); "
                "the file is damaged or of a variant Sumi does not load")
    return ""


def _check_file(field: str, kind: str, name: str, detect_name: str) -> dict[str, str]:
    """Validation of a split file: a .safetensors file is detected from its header; a problem names the input."""
    path = paths.find_model(kind, name)
    if path is None or path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
        return {}
    from .diffusion import detect as detection

    problem = detection_problem(path, name, getattr(detection, detect_name), SPLIT_SUPPORTED.get(detect_name))
    return {field: problem} if problem else {}


def _fingerprint(kind: str, *names: str) -> str:
    return "|".join([*(model_identity(kind, n) for n in names), devices.POLICY.describe()])


# UNETLoader's weight_dtype -> the dtype weights are rounded to (computed in the policy's dtype). `_fast` is
# ComfyUI's fp8 matmul on cards that have one, which also rounds the activations to fp8; Sumi does not use it, so
# `_fast` gives plain fp8_e4m3fn's results (ComfyUI's too on cards without fp8 matmul)
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn",
                 "fp8_e5m2": "float8_e5m2"}
# ComfyUI's type options, so its workflows validate in shape; Sumi runs stable_diffusion and sdxl (models.CLIP_TYPES)
CLIP_LOADER_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                     "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
                     "ovis"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
# the model family each type Sumi does not run is for, named in its validation error
CLIP_TYPE_FAMILIES = {
    "stable_cascade": "Stable Cascade", "sd3": "SD3 / SD3.5", "stable_audio": "Stable Audio", "mochi": "Mochi",
    "ltxv": "LTX-Video", "pixart": "PixArt", "cosmos": "Cosmos", "lumina2": "Lumina 2", "wan": "Wan",
    "hidream": "HiDream", "chroma": "Chroma", "ace": "ACE-Step", "omnigen2": "OmniGen2", "qwen_image": "Qwen-Image",
    "hunyuan_image": "HunyuanImage", "flux": "Flux", "hunyuan_video": "HunyuanVideo", "flux2": "Flux.2",
    "ovis": "Ovis-Image"}
CLIP_SUPPORTED = ("Sumi loads type stable_diffusion in Load CLIP (one CLIP-L file for SD1.x, or OpenCLIP-H for "
                  "SD2.x) and type sdxl in DualCLIPLoader (CLIP-L and OpenCLIP-bigG)")


def _appears(kind: str, name: str) -> str:
    """What a model file appears to be, from a .safetensors header ('' when it cannot be told before running)."""
    path = paths.find_model(kind, name)
    if path is None or path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
        return ""
    from .diffusion.detect import describe_text_encoder
    from .diffusion.reading import CheckpointError, open_checkpoint

    try:
        with open_checkpoint(path) as opened:
            return describe_text_encoder(opened.meta)
    except CheckpointError as e:
        return e.message


def _clip_type_error(clip_type: str, files: dict[str, str]) -> dict[str, str]:
    """The validation error of a CLIP type Sumi cannot run: which family it is for, what each file is, what
    Sumi loads instead."""
    seen = [f"{name} appears to be {what}" for name in files.values() if (what := _appears("text_encoders", name))]
    family = CLIP_TYPE_FAMILIES.get(clip_type, "another model family")
    return {"type": "; ".join([f"CLIP type {clip_type!r} is for {family}, a model family Sumi does not run", *seen,
                               CLIP_SUPPORTED])}
CLIP_DEVICES = ["default", "cpu"]


class UNETLoader(Node):
    type = "UNETLoader"
    model_files: ClassVar[dict[str, str]] = {"unet_name": "diffusion_models"}  # read by nodes.manifest
    display_name = "Load Diffusion Model"
    category = "advanced/loaders"
    description = ("Loads a diffusion model (UNet) file of SD1.x, SD2.x, SDXL or the SDXL refiner on its own; "
                   "fp8 weight dtypes round the weights to fp8 (files stored in fp8 load too).")
    cache_pool = "models"
    determinism = Determinism.VOLATILE
    inputs = (Input("unet_name", "COMBO", options=lambda: model_names("diffusion_models"),
                    missing_hint=paths.missing_model_hint("diffusion_models")),
              Input("weight_dtype", "COMBO", options=list(WEIGHT_DTYPES),
                    tooltip="fp8 types keep the weights at fp8 precision; Sumi computes in the device policy's "
                            "dtype (--precision), holding the weights upcast"))
    outputs = (Output("MODEL"),)

    @classmethod
    def fingerprint(cls, unet_name: str, weight_dtype: str) -> str:
        return _fingerprint("diffusion_models", unet_name)

    @classmethod
    def check(cls, unet_name: str, weight_dtype: str) -> dict[str, str]:
        return _check_file("unet_name", "diffusion_models", unet_name, "detect_diffusion_model")

    def run(self, ctx: Any, unet_name: str, weight_dtype: str) -> tuple[Any, ...]:
        import torch

        storage = WEIGHT_DTYPES[weight_dtype]
        return (models.load_diffusion_model(model_path("diffusion_models", unet_name),
                                            getattr(torch, storage) if storage else None),)


class CLIPLoader(Node):
    type = "CLIPLoader"
    model_files: ClassVar[dict[str, str]] = {"clip_name": "text_encoders"}  # read by nodes.manifest
    display_name = "Load CLIP"
    category = "advanced/loaders"
    description = ("Loads a text encoder file: type stable_diffusion takes CLIP-L (SD1.x) or OpenCLIP-H (SD2.x); "
                   "ComfyUI's other types are listed and refused with what the file appears to be.")
    cache_pool = "models"
    determinism = Determinism.VOLATILE
    inputs = (Input("clip_name", "COMBO", options=lambda: model_names("text_encoders"),
                    missing_hint=paths.missing_model_hint("text_encoders")),
              Input("type", "COMBO", options=CLIP_LOADER_TYPES),
              Input("device", "COMBO", options=CLIP_DEVICES, optional=True))
    outputs = (Output("CLIP"),)

    @classmethod
    def fingerprint(cls, clip_name: str, **_: Any) -> str:
        return _fingerprint("text_encoders", clip_name)

    @classmethod
    def check(cls, clip_name: str, type: str, device: str = "default") -> dict[str, str]:
        if type not in models.CLIP_TYPES:
            return _clip_type_error(type, {"clip_name": clip_name})
        return _check_file("clip_name", "text_encoders", clip_name, "detect_text_encoder")

    def run(self, ctx: Any, clip_name: str, type: str, device: str = "default") -> tuple[Any, ...]:
        return (models.load_text_encoders([model_path("text_encoders", clip_name)], type),)


class DualCLIPLoader(Node):
    type = "DualCLIPLoader"
    model_files: ClassVar[dict[str, str]] = {"clip_name1": "text_encoders", "clip_name2": "text_encoders"}
    category = "advanced/loaders"
    description = "Loads two text encoder files: type sdxl takes CLIP-L and OpenCLIP-bigG."
    cache_pool = "models"
    determinism = Determinism.VOLATILE
    inputs = (Input("clip_name1", "COMBO", options=lambda: model_names("text_encoders"),
                    missing_hint=paths.missing_model_hint("text_encoders")),
              Input("clip_name2", "COMBO", options=lambda: model_names("text_encoders"),
                    missing_hint=paths.missing_model_hint("text_encoders")),
              Input("type", "COMBO", options=DUAL_CLIP_TYPES),
              Input("device", "COMBO", options=CLIP_DEVICES, optional=True))
    outputs = (Output("CLIP"),)

    @classmethod
    def fingerprint(cls, clip_name1: str, clip_name2: str, **_: Any) -> str:
        return _fingerprint("text_encoders", clip_name1, clip_name2)

    @classmethod
    def check(cls, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> dict[str, str]:
        if type not in models.CLIP_TYPES:
            return _clip_type_error(type, {"clip_name1": clip_name1, "clip_name2": clip_name2})
        out = {}
        for field, name in (("clip_name1", clip_name1), ("clip_name2", clip_name2)):
            out |= _check_file(field, "text_encoders", name, "detect_text_encoder")
        return out

    def run(self, ctx: Any, clip_name1: str, clip_name2: str, type: str,
            device: str = "default") -> tuple[Any, ...]:
        files = [model_path("text_encoders", clip_name1), model_path("text_encoders", clip_name2)]
        return (models.load_text_encoders(files, type),)


def vae_names() -> list[str]:
    """VAE files, then ComfyUI's TAESD pseudo-names whose two halves are in vae_approx, then the tiny TAESDs."""
    from .diffusion.taesd import TAESD_NAMES

    taesd = [n for n in TAESD_NAMES if models.taesd_files(n) is not None]
    return [*model_names("vae"), *taesd, *models.TINY_TAESD]


def _is_taesd(vae_name: str) -> bool:
    from .diffusion.taesd import TAESD_NAMES

    return vae_name in models.TINY_TAESD or (vae_name in TAESD_NAMES and paths.find_model("vae", vae_name) is None)


class VAELoader(Node):
    type = "VAELoader"
    model_files: ClassVar[dict[str, str]] = {"vae_name": "vae"}  # read by nodes.manifest
    display_name = "Load VAE"
    category = "loaders"
    description = ("Loads a VAE file, or TAESD (taesd for SD1.x/SD2.x, taesdxl for SDXL) from the "
                   "NAME_encoder / NAME_decoder files in models/vae_approx.")
    cache_pool = "models"
    determinism = Determinism.VOLATILE
    inputs = (Input("vae_name", "COMBO", options=vae_names, missing_hint=paths.missing_model_hint("vae")),)
    outputs = (Output("VAE"),)

    @classmethod
    def fingerprint(cls, vae_name: str) -> str:
        if vae_name in models.TINY_TAESD and models.taesd_files(vae_name) is None:
            return f"tiny:{vae_name}|{devices.POLICY.describe()}"
        if _is_taesd(vae_name):
            files = models.taesd_files(vae_name)
            if files is None:
                raise FileNotFoundError(vae_name)
            return "|".join([*(model_file_identity(f) for f in files), devices.POLICY.describe()])
        return _fingerprint("vae", vae_name)

    @classmethod
    def check(cls, vae_name: str) -> dict[str, str]:
        if not _is_taesd(vae_name):
            return _check_file("vae_name", "vae", vae_name, "detect_vae")
        from .diffusion.taesd import RUNNABLE, TAESD_NAMES, detect_taesd

        family = TAESD_NAMES[models.TINY_TAESD.get(vae_name, vae_name)][0]
        if models.TINY_TAESD.get(vae_name, vae_name) not in RUNNABLE:
            return {"vae_name": f"{vae_name} decodes {family} latents (16 channels), a model family Sumi does not "
                                "run; taesd (SD1.x/SD2.x) and taesdxl (SDXL) load"}
        for part, path in zip(("encoder", "decoder"), models.taesd_files(vae_name) or ("", ""), strict=True):
            if not path:  # a tiny TAESD not built yet
                continue
            if path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
                continue
            problem = detection_problem(path, path.name, lambda meta, part=part: detect_taesd(meta, part),
                                        "TAESD halves in the original layout (NAME_encoder.* / NAME_decoder.*, "
                                        "each an nn.Sequential's state dict) for SD1.x/SD2.x and SDXL")
            if problem:
                return {"vae_name": problem}
        return {}

    def run(self, ctx: Any, vae_name: str) -> tuple[Any, ...]:
        if _is_taesd(vae_name):
            return (models.load_taesd(vae_name),)
        return (models.load_vae(model_path("vae", vae_name)),)


class ControlNetLoader(Node):
    type = "ControlNetLoader"
    model_files: ClassVar[dict[str, str]] = {"control_net_name": "controlnet"}  # read by nodes.manifest
    display_name = "Load ControlNet Model"
    category = "loaders"
    description = ("Loads a ControlNet for SD1.x, SD2.x or SDXL: an original single file (control_model.*) or a "
                   "diffusers folder's diffusion_pytorch_model.* (listed as folder/file).")
    cache_pool = "models"
    determinism = Determinism.VOLATILE
    inputs = (Input("control_net_name", "COMBO",
                    options=lambda: model_names("controlnet"),
                    missing_hint=paths.missing_model_hint("controlnet")),)
    outputs = (Output("CONTROL_NET"),)

    @classmethod
    def fingerprint(cls, control_net_name: str) -> str:
        return _fingerprint("controlnet", control_net_name)

    @classmethod
    def check(cls, control_net_name: str) -> dict[str, str]:
        path = paths.find_model("controlnet", control_net_name)
        if path is None or path.suffix.lower() != ".safetensors" or not os.access(path, os.R_OK):
            return {}
        from .diffusion.controlnet import detect_controlnet

        problem = detection_problem(path, control_net_name, detect_controlnet)
        return {"control_net_name": problem} if problem else {}

    def run(self, ctx: Any, control_net_name: str) -> tuple[Any, ...]:
        from .diffusion.controlnet import ControlNet, load_controlnet

        policy = devices.POLICY
        family, net = load_controlnet(model_path("controlnet", control_net_name), policy.device,
                                      policy.unet_dtype())
        return (ControlNet(net, family, policy.device, policy.unet_dtype()),)


NODES = (CheckpointLoaderSimple, LoraLoader, LoraLoaderModelOnly, UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader,
         ControlNetLoader)
