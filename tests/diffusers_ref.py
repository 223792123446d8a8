"""Plain diffusers pipelines on the very files Sumi loads: the reference side of
tests/nodes/test_diffusers_pipelines.py, benchmarks/sdxl.py and benchmarks/gpu_check.py.

diffusers' `from_single_file` works offline only with a local folder of configs, so `write_config_folder` writes
one for a file (model_index.json, the UNet/VAE/text-encoder configs Sumi's detection derives from the file's shapes,
the shipped CLIP tokenizer files, an EulerDiscreteScheduler config). The weights are converted by diffusers' own
code (`from_single_file` for the UNet and VAE, `convert_ldm_clip_checkpoint` / `convert_open_clip_checkpoint` for the
text encoders), never by Sumi's `ldm_layout`, so a conversion error on either side shows as a difference.

The text encoders are converted explicitly because `from_single_file` tells SDXL's CLIP-L from OpenCLIP-bigG by
their widths, which coincide in the tiny models (both 32): it would fill text_encoder_2 with CLIP-L's weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from nodes.diffusion.detect import FamilyInfo, detect
from nodes.diffusion.reading import open_checkpoint
from nodes.diffusion.tokenizer import TOKENIZER_DIR

# diffusers' component folders per family, in Sumi's text-encoder order
TEXT_FOLDERS = {"sd15": {"clip_l": "text_encoder"}, "sd2": {"clip_h": "text_encoder"},
                "sdxl": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"},
                "sdxl_refiner": {"clip_g": "text_encoder_2"}}


def family_info(path: str | Path) -> FamilyInfo:
    """What Sumi detects in a single file: its family and the diffusers/transformers configs of its shapes."""
    with open_checkpoint(Path(path)) as opened:
        return detect(opened.meta, opened.read)


def _put(folder: Path, name: str, data: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data, indent=1))


def write_config_folder(info: FamilyInfo, folder: str | Path, pipeline: str) -> Path:
    """A diffusers model folder without weights for `info`'s family, for `pipeline` (a class name of
    diffusers' pipelines). The scheduler is EulerDiscreteScheduler with "leading" spacing: its init_noise_sigma is
    sqrt(sigma_max² + 1), the scale ComfyUI (and Sumi) give the initial noise at the top of the schedule."""
    folder = Path(folder)
    _put(folder / "unet", "config.json", {"_class_name": "UNet2DConditionModel", **info.unet_config})
    _put(folder / "vae", "config.json", {"_class_name": "AutoencoderKL", **info.vae_config})
    # steps_offset 1 as released SD configs have it (the inpainting pipeline warns otherwise); explicit timesteps
    # (what the tests pass) do not read it
    _put(folder / "scheduler", "scheduler_config.json",
         {"_class_name": "EulerDiscreteScheduler", **info.schedule, "timestep_spacing": "leading", "steps_offset": 1})
    index: dict[str, Any] = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"],
                             "vae": ["diffusers", "AutoencoderKL"],
                             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for name, sub in TEXT_FOLDERS[info.family].items():
        spec = info.text[name]
        arch = "CLIPTextModelWithProjection" if spec.kind == "openclip" else "CLIPTextModel"
        _put(folder / sub, "config.json", {"architectures": [arch], "model_type": "clip_text_model", **spec.config})
        tok = folder / sub.replace("text_encoder", "tokenizer")
        shutil.copytree(TOKENIZER_DIR, tok, dirs_exist_ok=True)
        if spec.kind == "openclip":  # OpenCLIP towers pad with "!" (id 0), as Stability's tokenizer_2 does
            for file in ("tokenizer_config.json", "special_tokens_map.json"):
                data = json.loads((tok / file).read_text())
                data["pad_token"] = "!"
                (tok / file).write_text(json.dumps(data, indent=1))
        index[sub] = ["transformers", arch]
        index[sub.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    if info.family.startswith("sdxl"):
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def convert_text_encoders(info: FamilyInfo, path: str | Path, folder: Path,
                          dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """{diffusers folder name: transformers module} converted by diffusers' own single-file helpers."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    prefixes = tuple(t.prefix.removesuffix("text_model.").removesuffix("model.") for t in info.text.values())
    with safe_open(str(path), "pt") as f:  # the text encoders' tensors only (SDXL's file is 6.9 GB)
        checkpoint = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    out = {}
    for name, sub in TEXT_FOLDERS[info.family].items():
        spec = info.text[name]
        config = CLIPTextConfig.from_pretrained(str(folder / sub))
        if spec.kind == "openclip":
            model = CLIPTextModelWithProjection(config)
            prefix = spec.prefix.removesuffix("model.") + "model."
            sd = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
        else:
            model = CLIPTextModel(config)
            sd = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=spec.prefix.removesuffix("text_model."))
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
        if not any(k.startswith("text_model.") for k in model.state_dict()):  # transformers 5 flattened CLIPTextModel
            sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
        model.load_state_dict(sd, strict=False)
        missing = [k for k, v in model.state_dict().items() if k not in sd and not k.endswith("position_ids")]
        if missing:
            raise KeyError(f"{name}: diffusers' converter gave no value for {missing[:5]}")
        out[sub] = model.to(dtype).eval().requires_grad_(False)
    return out


def pipeline(cls: type, path: str | Path, folder: str | Path, dtype: torch.dtype = torch.float32,
             info: FamilyInfo | None = None, **components: Any) -> Any:
    """`cls.from_single_file(path)` offline, from a config folder written for it, with the text encoders
    converted by `convert_text_encoders`; `components` (e.g. controlnet=...) are passed through."""
    info = info or family_info(path)
    folder = write_config_folder(info, folder, cls.__name__)
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False} \
        if not info.family.startswith("sdxl") else {"add_watermarker": False}
    # the text encoders join after the UNet and VAE are built: from_single_file holds the whole file meanwhile
    pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                                **dict.fromkeys(TEXT_FOLDERS[info.family].values()), **kwargs, **components)
    pipe.register_modules(**convert_text_encoders(info, path, folder, dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def controlnet(path: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """A ControlNetModel of an original-layout file, its weights converted by diffusers' `convert_controlnet_checkpoint`
    (what `ControlNetModel.from_single_file` runs) from the config Sumi detects. diffusers 0.42's converter leaves
    out SDXL's ADM embedding (`label_emb.0.0/2` → `add_embedding.linear_1/2`, the UNet converter's names): those four
    tensors are mapped here, so an SDXL ControlNet loads at all."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    from nodes.diffusion.controlnet import detect_controlnet

    checkpoint = load_file(str(path))
    config = detect_controlnet(checkpoint).config
    sd = convert_controlnet_checkpoint(checkpoint, config)
    for linear, ldm in ((1, 0), (2, 2)):
        for p in ("weight", "bias"):
            if f"control_model.label_emb.0.{ldm}.{p}" in checkpoint:
                sd[f"add_embedding.linear_{linear}.{p}"] = checkpoint[f"control_model.label_emb.0.{ldm}.{p}"]
    net = ControlNetModel.from_config(config)
    net.load_state_dict(sd, strict=True)
    return net.to(dtype).eval().requires_grad_(False)
