"""ControlNet (Zhang et al. 2023): original single files (`control_model.*`) and diffusers-layout files (a
diffusers folder's `diffusion_pytorch_model.*`), SD1.x / SD2.x / SDXL, loaded into diffusers' `ControlNetModel`,
and the control a conditioning entry carries.

Detection reads the same UNet facts as checkpoints (the ControlNet is a copy of the UNet's encoder) from either
layout, plus the hint encoder's widths; original names are converted by diffusers' own
`convert_controlnet_checkpoint`, diffusers names load as they are. At a model call, a
`Control` whose sigma window holds the current sigma runs its ControlNet on the same scaled input, timestep and
per-row context (and SDXL size conditioning) as the UNet, with the hint image in 0..1 resized (nearest) to the
latent × 8; its 12 + 1 residuals, times its strength, are added to the UNet's skip connections and middle block,
summed with those of the control it was chained onto (ComfyUI's behaviour, see shared/reference/parity-next).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import Plan, load_component
from .detect import LABELS, _strip, _unet_config, diffusers_unet_facts, unet_facts, unet_only_family
from .reading import CheckpointError, Source

PREFIX = "control_model."
_HINT = re.compile(r"^input_hint_block\.(\d+)\.weight$")
_D_HINT = re.compile(r"^controlnet_cond_embedding\.blocks\.(\d+)\.weight$")


@dataclass(frozen=True)
class ControlNetFile:
    """What `detect_controlnet` found: the diffusers ControlNetModel config, the family, and the file's layout,
    `ldm` (the original `control_model.*` names, under `prefix`) or `diffusers` (ControlNetModel's own names)."""

    config: dict[str, Any]
    family: str
    prefix: str = PREFIX
    layout: str = "ldm"


def detect_controlnet(state_dict: Mapping[str, torch.Tensor]) -> ControlNetFile:
    """Config, family and layout of a ControlNet file: the original single-file layout (`control_model.` +
    `input_hint_block`, `zero_convs`, the UNet encoder's LDM names) or diffusers' (`controlnet_cond_embedding`,
    `controlnet_down_blocks`, `controlnet_mid_block`, `down_blocks`), as a diffusers folder's
    `diffusion_pytorch_model.*` holds it. The config comes from shapes in both (ComfyUI reads no config.json)."""
    prefix = PREFIX if any(k.startswith(PREFIX) for k in state_dict) else ""
    c = _strip(state_dict, prefix)
    if "input_hint_block.0.weight" in c and "zero_convs.0.0.weight" in c:
        uf = unet_facts(c | {"out.2.weight": torch.empty(c["input_blocks.0.0.weight"].shape[1], 1, device="meta")})
        hint = sorted(int(m.group(1)) for k in c if (m := _HINT.match(k)))
        first = c[f"input_hint_block.{hint[0]}.weight"]
        widths = [first.shape[0]]
        for i in hint[1:-1]:  # the strided convs change the width: those are the embedding's block widths
            w = c[f"input_hint_block.{i}.weight"]
            if w.shape[0] != w.shape[1]:
                widths.append(w.shape[0])
        layout = "ldm"
    elif "controlnet_cond_embedding.conv_in.weight" in state_dict and "controlnet_mid_block.weight" in state_dict:
        c, prefix, layout = dict(state_dict), "", "diffusers"
        uf = diffusers_unet_facts(c)
        uf["out_channels"] = uf["in_channels"]  # a ControlNet has no output head; its input is the latent's
        first = c["controlnet_cond_embedding.conv_in.weight"]
        blocks = sorted(int(m.group(1)) for k in c if (m := _D_HINT.match(k)))
        widths = [first.shape[0], *(c[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]
                                    for i in blocks if i % 2 == 1)]  # odd blocks are the strided ones
    else:
        raise CheckpointError("not a ControlNet (no input_hint_block / zero_convs, nor diffusers' "
                              "controlnet_cond_embedding / controlnet_mid_block)",
                              detected=f"{len(state_dict)} tensors, e.g. {sorted(state_dict)[:3]}")
    family, pooled = unet_only_family(uf)
    unet = _unet_config(family, uf, pooled)
    from diffusers import ControlNetModel

    allowed = set(inspect.signature(ControlNetModel.__init__).parameters)
    config = {k: v for k, v in unet.items() if k in allowed}
    config.update(conditioning_channels=first.shape[1], conditioning_embedding_out_channels=widths)
    return ControlNetFile(config, family, prefix, layout)


def _convert_ldm(found: ControlNetFile, src: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original names to ControlNetModel's: diffusers' own converter, plus SDXL's ADM embedding it leaves out."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    sd = {PREFIX + k[len(found.prefix):]: src[k] for k in list(src) if k.startswith(found.prefix)}
    converted = convert_controlnet_checkpoint(sd, found.config)
    for i, j in ((1, 0), (2, 2)):
        for p in ("weight", "bias"):
            if f"{PREFIX}label_emb.0.{j}.{p}" in sd:
                converted.setdefault(f"add_embedding.linear_{i}.{p}", sd[f"{PREFIX}label_emb.0.{j}.{p}"])
    return converted


def _plan(opened: Source) -> tuple[ControlNetFile, Plan]:
    found = detect_controlnet(opened.meta)
    from diffusers import ControlNetModel

    if found.layout == "ldm":
        convert = lambda src, _: _convert_ldm(found, src)  # noqa: E731
    else:
        convert = lambda src, _: {k: src[k] for k in list(src)}  # noqa: E731
    label = f"a {LABELS[found.family]} ControlNet ({found.layout} layout)"
    return found, Plan(label, lambda: ControlNetModel.from_config(found.config), convert)


def load_controlnet(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[str, torch.nn.Module]:
    """(family, ControlNetModel) of a ControlNet file in either layout (read on a background thread while the
    module is built, as the component loaders do)."""
    found, net = load_component(path, _plan, device, dtype)
    return found.family, net


@dataclass(frozen=True)
class ControlNet:
    """CONTROL_NET: a loaded ControlNet model."""

    net: torch.nn.Module
    family: str
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class Control:
    """What ControlNetApply(Advanced) puts on a conditioning entry: a ControlNet, its hint and strength, its
    window in percent of sampling, and the control it was chained onto."""

    control_net: ControlNet
    hint: torch.Tensor  # IMAGE [B, H, W, 3] in 0..1
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: Control | None = None

    def residuals(self, x_in: torch.Tensor, timestep: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                  sigma: float, model_sampling: Any) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """The summed (down, mid) residuals of this control and those before it that are active at `sigma`."""
        out = self.previous.residuals(x_in, timestep, inputs, sigma, model_sampling) if self.previous else None
        start, end = model_sampling.percent_to_sigma(self.start_percent), model_sampling.percent_to_sigma(
            self.end_percent)
        if not end <= sigma <= start:
            return out
        cn = self.control_net
        hint = self.hint.movedim(-1, 1).to(device=x_in.device, dtype=torch.float32)
        size = (x_in.shape[2] * 8, x_in.shape[3] * 8)
        if tuple(hint.shape[2:]) != size:
            hint = F.interpolate(hint, size=size, mode="nearest-exact")
        if hint.shape[0] != x_in.shape[0]:
            hint = hint.repeat(-(-x_in.shape[0] // hint.shape[0]), 1, 1, 1)[: x_in.shape[0]]
        kwargs: dict[str, Any] = {}
        if "text_embeds" in inputs:
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"].to(cn.dtype),
                                           "time_ids": inputs["time_ids"]}
        with torch.inference_mode():
            down, mid = cn.net(x_in.to(cn.dtype), timestep, encoder_hidden_states=inputs["context"].to(cn.dtype),
                               controlnet_cond=hint.to(cn.dtype), conditioning_scale=self.strength,
                               return_dict=False, **kwargs)
        down = [d.to(x_in.dtype) for d in down]
        mid = mid.to(x_in.dtype)
        if out is None:
            return down, mid
        return [a + b for a, b in zip(out[0], down, strict=True)], out[1] + mid
