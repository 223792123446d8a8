"""Prompt encoding (CLIPTextEncode, the SDXL encoders) and the CONDITIONING tools.

A CONDITIONING is a list of `[cond [1, T, D], {pooled_output, ...}]` entries; tools return new lists with copied
dicts, never editing their input (it may be cached). How the sampler honours areas, masks, strengths and
timestep ranges: nodes/diffusion/conds.py.
"""
from __future__ import annotations

from typing import Any

import torch

from executor.schema import Input, Node, Output

MAX_RESOLUTION = 16384
TEXT = {"multiline": True, "extra": {"dynamicPrompts": True}}


def set_values(conditioning: list, values: dict[str, Any]) -> list:
    """Every entry with `values` set in a copy of its dict (ComfyUI's conditioning_set_values)."""
    return [[c[0], {**c[1], **values}] for c in conditioning]


class CLIPTextEncode(Node):
    type = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = "Encodes a prompt with (word:1.2) weighting into conditioning for the sampler."
    inputs = (Input("text", "STRING", multiline=True, extra={"dynamicPrompts": True},
                    tooltip="The text to be encoded."),
              Input("clip", "CLIP", tooltip="The CLIP model used for encoding the text."))
    outputs = (Output("CONDITIONING", tooltip="The encoded text, to guide the diffusion model."),)

    def run(self, ctx: Any, text: str, clip: Any) -> tuple[Any, ...]:
        cond, pooled = clip.encode(text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(Node):
    type = "CLIPSetLastLayer"
    display_name = "CLIP Set Last Layer"
    category = "conditioning"
    inputs = (Input("clip", "CLIP"), Input("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1))
    outputs = (Output("CLIP"),)

    def run(self, ctx: Any, clip: Any, stop_at_clip_layer: int) -> tuple[Any, ...]:
        return (clip.with_layer(stop_at_clip_layer),)


def _size(name: str, default: int) -> Input:
    return Input(name, "INT", default=default, min=0, max=MAX_RESOLUTION)


class CLIPTextEncodeSDXL(Node):
    type = "CLIPTextEncodeSDXL"
    category = "advanced/conditioning"
    description = "SDXL prompt: OpenCLIP-bigG reads text_g, CLIP-L text_l; with SDXL's size and crop conditioning."
    inputs = (Input("clip", "CLIP"), _size("width", 1024), _size("height", 1024), _size("crop_w", 0),
              _size("crop_h", 0), _size("target_width", 1024), _size("target_height", 1024),
              Input("text_g", "STRING", **TEXT), Input("text_l", "STRING", **TEXT))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, clip: Any, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
            target_height: int, text_g: str, text_l: str) -> tuple[Any, ...]:
        cond, pooled = clip.encode_pair(text_g, text_l)
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class CLIPTextEncodeSDXLRefiner(Node):
    type = "CLIPTextEncodeSDXLRefiner"
    category = "advanced/conditioning"
    description = "SDXL refiner prompt (OpenCLIP-bigG) with its aesthetic-score and size conditioning."
    inputs = (Input("ascore", "FLOAT", default=6.0, min=0.0, max=1000.0, step=0.01), _size("width", 1024),
              _size("height", 1024), Input("text", "STRING", **TEXT), Input("clip", "CLIP"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, ascore: float, width: int, height: int, text: str, clip: Any) -> tuple[Any, ...]:
        cond, pooled = clip.encode(text)
        return ([[cond, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]],)


class ConditioningCombine(Node):
    type = "ConditioningCombine"
    display_name = "Conditioning (Combine)"
    category = "conditioning"
    inputs = (Input("conditioning_1", "CONDITIONING"), Input("conditioning_2", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning_1: list, conditioning_2: list) -> tuple[Any, ...]:
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningAverage(Node):
    type = "ConditioningAverage"
    category = "conditioning"
    inputs = (Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING"),
              Input("conditioning_to_strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning_to: list, conditioning_from: list,
            conditioning_to_strength: float) -> tuple[Any, ...]:
        # Only the first entry of `from` is used (as ComfyUI does); shorter token axes are zero-padded.
        cond_from = conditioning_from[0][0]
        pooled_from = conditioning_from[0][1].get("pooled_output")
        w = conditioning_to_strength
        out = []
        for t1, extras in conditioning_to:
            pooled_to = extras.get("pooled_output", pooled_from)
            t0 = cond_from[:, :t1.shape[1]]
            if t0.shape[1] < t1.shape[1]:
                t0 = torch.cat([t0, torch.zeros((1, t1.shape[1] - t0.shape[1], t1.shape[2]))], dim=1)
            d = dict(extras)
            if pooled_from is not None and pooled_to is not None:
                d["pooled_output"] = torch.mul(pooled_to, w) + torch.mul(pooled_from, 1.0 - w)
            elif pooled_from is not None:
                d["pooled_output"] = pooled_from
            out.append([torch.mul(t1, w) + torch.mul(t0, 1.0 - w), d])
        return (out,)


class ConditioningConcat(Node):
    type = "ConditioningConcat"
    category = "conditioning"
    inputs = (Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning_to: list, conditioning_from: list) -> tuple[Any, ...]:
        cond_from = conditioning_from[0][0]  # the first entry's tokens, appended to every entry of `to`
        return ([[torch.cat((t, cond_from), 1), dict(d)] for t, d in conditioning_to],)


class ConditioningSetArea(Node):
    type = "ConditioningSetArea"
    category = "conditioning"
    inputs = (Input("conditioning", "CONDITIONING"),
              Input("width", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list, width: int, height: int, x: int, y: int,
            strength: float) -> tuple[Any, ...]:
        area = (height // 8, width // 8, y // 8, x // 8)  # latent units
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(Node):
    type = "ConditioningSetAreaPercentage"
    category = "conditioning"
    inputs = (Input("conditioning", "CONDITIONING"),
              *(Input(n, "FLOAT", default=d, min=0.0, max=1.0, step=0.01)
                for n, d in (("width", 1.0), ("height", 1.0), ("x", 0.0), ("y", 0.0))),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list, width: float, height: float, x: float, y: float,
            strength: float) -> tuple[Any, ...]:
        area = ("percentage", height, width, y, x)  # resolved against the latent when sampling
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetMask(Node):
    type = "ConditioningSetMask"
    category = "conditioning"
    inputs = (Input("conditioning", "CONDITIONING"), Input("mask", "MASK"),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
              Input("set_cond_area", "COMBO", options=["default", "mask bounds"]))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list, mask: torch.Tensor, strength: float,
            set_cond_area: str) -> tuple[Any, ...]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (set_values(conditioning, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                                          "mask_strength": strength}),)


class ConditioningZeroOut(Node):
    type = "ConditioningZeroOut"
    category = "advanced/conditioning"
    inputs = (Input("conditioning", "CONDITIONING"),)
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list) -> tuple[Any, ...]:
        out = []
        for t, extras in conditioning:
            d = dict(extras)
            if d.get("pooled_output") is not None:
                d["pooled_output"] = torch.zeros_like(d["pooled_output"])
            out.append([torch.zeros_like(t), d])
        return (out,)


class ConditioningSetTimestepRange(Node):
    type = "ConditioningSetTimestepRange"
    category = "advanced/conditioning"
    inputs = (Input("conditioning", "CONDITIONING"),
              Input("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
              Input("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list, start: float, end: float) -> tuple[Any, ...]:
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


NODES = (CLIPTextEncode, CLIPSetLastLayer, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, ConditioningCombine,
         ConditioningAverage, ConditioningConcat, ConditioningSetArea, ConditioningSetAreaPercentage,
         ConditioningSetMask, ConditioningZeroOut, ConditioningSetTimestepRange)


class ControlNetApplyAdvanced(Node):
    type = "ControlNetApplyAdvanced"
    display_name = "Apply ControlNet"
    category = "conditioning/controlnet"
    inputs = (Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("control_net", "CONTROL_NET"), Input("image", "IMAGE"),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
              Input("start_percent", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
              Input("end_percent", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
              Input("vae", "VAE", optional=True))
    outputs = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def run(self, ctx: Any, positive: list, negative: list, control_net: Any, image: torch.Tensor, strength: float,
            start_percent: float, end_percent: float, vae: Any = None) -> tuple[Any, ...]:
        from .diffusion.controlnet import Control

        if strength == 0:
            return (positive, negative)
        made: dict[int, Any] = {}  # one Control per previous control: both sides share it (one batch)
        out = []
        for conditioning in (positive, negative):
            entries = []
            for t, extras in conditioning:
                prev = extras.get("control")
                if id(prev) not in made:
                    made[id(prev)] = Control(control_net, image, strength, start_percent, end_percent, prev)
                entries.append([t, {**extras, "control": made[id(prev)], "control_apply_to_uncond": False}])
            out.append(entries)
        return tuple(out)


class ControlNetApply(Node):
    type = "ControlNetApply"
    display_name = "Apply ControlNet (OLD)"
    category = "conditioning/controlnet"
    inputs = (Input("conditioning", "CONDITIONING"), Input("control_net", "CONTROL_NET"), Input("image", "IMAGE"),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx: Any, conditioning: list, control_net: Any, image: torch.Tensor,
            strength: float) -> tuple[Any, ...]:
        from .diffusion.controlnet import Control

        if strength == 0:
            return (conditioning,)
        return ([[t, {**d, "control": Control(control_net, image, strength, previous=d.get("control")),
                      "control_apply_to_uncond": True}] for t, d in conditioning],)


NODES = (*NODES, ControlNetApplyAdvanced, ControlNetApply)
