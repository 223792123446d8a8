"""LoRA files as weight patches: kohya/A1111 (`lora_unet_…`, `lora_te_…`, with alpha; LoCon conv layers) and
diffusers/PEFT (`unet.….lora_A/lora_B`, `text_encoder.…`), on SD1.x, SD2.x and SDXL.

Which file names reach which weight follows ComfyUI's key map (facts from its behaviour, see
shared/reference/parity-next/README.md): UNet modules by their diffusers path with "." → "_" after `lora_unet_`
(also their original LDM path), or `unet.` + the diffusers path in the old attention-processor form
(`attn1.processor.to_q`, `…processor.to_out`); text encoder layers as `lora_te_text_model_encoder_layers_<i>_…`
(SDXL: `lora_te1_` CLIP-L, `lora_te2_` bigG) or `text_encoder(_2).text_model.encoder.layers.<i>.…`. A name that
matches no weight is reported, not applied; so PEFT files' `unet.….attn1.to_q` projections are skipped, as
ComfyUI 0.3.64 skips them (diffusers' own loader would apply them).

Each module: W += strength · (alpha / rank) · up @ down (up/down flattened, reshaped to W; no alpha: scale 1).
Text encoder weights are held at fp16 precision as ComfyUI holds them (its default text encoder dtype, even when it
computes in fp32), so their patched values are rounded to fp16 (`TEXT_WEIGHT_DTYPE`); UNet weights are not.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import ldm_layout as L
from .patches import WeightPatch
from .reading import CheckpointError, read_state_dict

log = logging.getLogger("sumi.lora")
TEXT_WEIGHT_DTYPE = torch.float16

_CLIP_PARTS = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")
_CLIP_LAYER = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)\.weight$")
_UP_DOWN = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))
# (kohya prefix, diffusers prefix) per text encoder, by family
_TEXT_PREFIXES: dict[tuple[str, str], tuple[str, str]] = {
    ("sd15", "clip_l"): ("lora_te_", "text_encoder."), ("sd2", "clip_h"): ("lora_te_", "text_encoder."),
    ("sdxl", "clip_l"): ("lora_te1_", "text_encoder."), ("sdxl", "clip_g"): ("lora_te2_", "text_encoder_2."),
    ("sdxl_refiner", "clip_g"): ("lora_te_", "text_encoder."),
}


@dataclass(frozen=True)
class LoraModule:
    up: torch.Tensor
    down: torch.Tensor
    scale: float  # alpha / rank, or 1 without alpha

    def delta(self) -> torch.Tensor:
        return torch.mm(self.up.flatten(start_dim=1).float(), self.down.flatten(start_dim=1).float())


def unet_key_map(unet_keys: Any, unet_config: Mapping[str, Any]) -> dict[str, str]:
    """{LoRA module name: UNet parameter key} for every weight of a diffusers UNet."""
    out: dict[str, str] = {}
    for key in unet_keys:
        if not key.endswith(".weight"):
            continue
        path = key[: -len(".weight")]
        out["lora_unet_" + path.replace(".", "_")] = key
        try:
            ldm = L.unet_key(key, unet_config)[len(L.UNET_PREFIX): -len(".weight")]
            out["lora_unet_" + ldm.replace(".", "_")] = key
        except KeyError:
            pass
        processor = path.replace(".to_", ".processor.to_")
        if processor.endswith(".to_out.0"):
            processor = processor[:-2]
        out["unet." + processor] = key
        out[processor] = key
    return out


def text_key_map(family: str, name: str, text_keys: Any) -> dict[str, str]:
    """{LoRA module name: text encoder parameter key} for the attention and MLP weights of each layer."""
    kohya, diffusers = _TEXT_PREFIXES[(family, name)]
    out: dict[str, str] = {}
    for key in text_keys:
        m = _CLIP_LAYER.match(key)
        if m is None or m.group(2) not in _CLIP_PARTS:
            continue
        i, part = m.groups()
        out[f"{kohya}text_model_encoder_layers_{i}_{part.replace('.', '_')}"] = key
        out[f"{diffusers}text_model.encoder.layers.{i}.{part}"] = key
    return out


def parse(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, LoraModule], list[str]]:
    """The LoRA modules of a file's state dict, and the keys that are no LoRA pair (reported, not used)."""
    modules: dict[str, LoraModule] = {}
    used: set[str] = set()
    for key in sd:
        for up_suffix, down_suffix in _UP_DOWN:
            if not key.endswith(up_suffix):
                continue
            name = key[: -len(up_suffix)]
            down_key = name + down_suffix
            if down_key not in sd:
                continue
            up, down = sd[key], sd[down_key]
            alpha = sd.get(name + ".alpha")
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            modules[name] = LoraModule(up, down, scale)
            used |= {key, down_key, name + ".alpha"}
    return modules, [k for k in sd if k not in used]


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    sd = read_state_dict(path)
    if not any(k.endswith(s) for k in sd for pair in _UP_DOWN for s in pair):
        raise CheckpointError("no LoRA up/down (or lora_A/lora_B) tensor pairs in the file", path=path,
                              detected=f"{len(sd)} tensors, e.g. {sorted(sd)[:3]}", hint="is this a LoRA file?")
    return sd


def patches_for(modules: Mapping[str, LoraModule], key_map: Mapping[str, str], params: Mapping[str, torch.Tensor],
                strength: float, round_to: torch.dtype | None = None) -> tuple[tuple[WeightPatch, ...], set[str]]:
    """The patches of the modules the key map knows (shape-checked), and the module names it applied."""
    out, applied = [], set()
    for name, mod in modules.items():
        key = key_map.get(name)
        if key is None:
            continue
        target = params[key]
        if mod.up.shape[0] * math_prod(mod.down.shape[1:]) != target.numel():
            raise CheckpointError(f"LoRA module {name} ({tuple(mod.up.shape)} @ {tuple(mod.down.shape)}) does not fit "
                                  f"the weight {key} {tuple(target.shape)}", reason="mismatch",
                                  hint="is the LoRA for another model family?")
        out.append(WeightPatch(key, mod.delta, strength * mod.scale, round_to))
        applied.add(name)
    return tuple(out), applied


def math_prod(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def warn_unapplied(path: str, modules: Mapping[str, LoraModule], applied: set[str], extra: list[str]) -> list[str]:
    missed = sorted(set(modules) - applied)
    for name in missed:
        log.warning("lora key not loaded: %s (%s)", name, path)
    for key in extra:
        log.warning("lora key not loaded: %s (%s)", key, path)
    return missed
