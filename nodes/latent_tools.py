"""Latent tools: compositing, blending, batch slicing and repetition, noise masks (ComfyUI's names and rules)."""
from __future__ import annotations

import math
from typing import Any

import torch

from executor.schema import Input, Node, Output

from .compositing import paste, resize
from .latent import MAX_RESOLUTION

PIXELS_8 = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}


class LatentComposite(Node):
    type = "LatentComposite"
    display_name = "Latent Composite"
    category = "latent"
    description = "Pastes samples_from into samples_to at (x, y) pixels (multiples of 8), feathering inner edges."
    inputs = (Input("samples_to", "LATENT"), Input("samples_from", "LATENT"),
              Input("x", "INT", **PIXELS_8), Input("y", "INT", **PIXELS_8), Input("feather", "INT", **PIXELS_8))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples_to: dict[str, Any], samples_from: dict[str, Any], x: int, y: int,
            feather: int) -> tuple[Any, ...]:
        x, y, feather = x // 8, y // 8, feather // 8
        to, src = samples_to["samples"], samples_from["samples"]
        out = to.clone()
        if y >= to.shape[2] or x >= to.shape[3]:
            return ({**samples_to, "samples": out},)  # entirely outside: nothing to paste
        src = src[:, :, :to.shape[2] - y, :to.shape[3] - x].to(to)
        h, w = src.shape[2], src.shape[3]
        if src.shape[0] not in (1, to.shape[0]):
            raise ValueError(f"LatentComposite: samples_from has a batch of {src.shape[0]}, samples_to of "
                             f"{to.shape[0]}; they must match (or samples_from must be 1)")
        if feather == 0:
            out[:, :, y:y + h, x:x + w] = src
        else:
            mask = torch.ones_like(src)
            for t in range(feather):
                weight = (1.0 / feather) * (t + 1)  # ComfyUI's ramp: 1/f, 2/f, … towards the inside
                if y != 0:
                    mask[:, :, t:t + 1, :] *= weight
                if y + h < to.shape[2]:
                    mask[:, :, h - 1 - t:h - t, :] *= weight
                if x != 0:
                    mask[:, :, :, t:t + 1] *= weight
                if x + w < to.shape[3]:
                    mask[:, :, :, w - 1 - t:w - t] *= weight
            out[:, :, y:y + h, x:x + w] = src * mask + out[:, :, y:y + h, x:x + w] * (torch.ones_like(mask) - mask)
        return ({**samples_to, "samples": out},)


class LatentCompositeMasked(Node):
    type = "LatentCompositeMasked"
    category = "latent"
    python_module = "comfy_extras.nodes_mask"
    description = "Pastes source into destination at (x, y) pixels, weighted by an optional mask."
    inputs = (Input("destination", "LATENT"), Input("source", "LATENT"),
              Input("x", "INT", **PIXELS_8), Input("y", "INT", **PIXELS_8),
              Input("resize_source", "BOOLEAN", default=False),
              Input("mask", "MASK", optional=True))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, destination: dict[str, Any], source: dict[str, Any], x: int, y: int,
            resize_source: bool, mask: torch.Tensor | None = None) -> tuple[Any, ...]:
        samples = paste(destination["samples"], source["samples"], x, y, mask, 8, resize_source)
        return ({**destination, "samples": samples},)


def _masks_to_batch(masks: torch.Tensor, batch: int) -> torch.Tensor:
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), 1, 1, 1)[:batch]
    return masks


class RepeatLatentBatch(Node):
    type = "RepeatLatentBatch"
    display_name = "Repeat Latent Batch"
    category = "latent/batch"
    inputs = (Input("samples", "LATENT"), Input("amount", "INT", default=1, min=1, max=64))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples: dict[str, Any], amount: int) -> tuple[Any, ...]:
        out = {**samples, "samples": samples["samples"].repeat((amount, 1, 1, 1))}
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:  # a single mask already applies to every entry
            out["noise_mask"] = mask.repeat((amount, 1, 1, 1))
        if "batch_index" in samples:  # the copies continue the indices, so each gets its own noise
            indices = list(samples["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + n * offset for n in range(1, amount) for i in indices]
        return (out,)


class LatentFromBatch(Node):
    type = "LatentFromBatch"
    display_name = "Latent From Batch"
    category = "latent/batch"
    inputs = (Input("samples", "LATENT"), Input("batch_index", "INT", default=0, min=0, max=63),
              Input("length", "INT", default=1, min=1, max=64))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples: dict[str, Any], batch_index: int, length: int) -> tuple[Any, ...]:
        s_in = samples["samples"]
        batch_index = min(s_in.shape[0] - 1, batch_index)
        length = min(s_in.shape[0] - batch_index, length)
        out = {**samples, "samples": s_in[batch_index:batch_index + length].clone()}
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                masks = _masks_to_batch(masks, s_in.shape[0])
                out["noise_mask"] = masks[batch_index:batch_index + length].clone()
        # The slice remembers where it came from, so the sampler draws the same noise as for the full batch.
        if "batch_index" in samples:
            out["batch_index"] = list(samples["batch_index"])[batch_index:batch_index + length]
        else:
            out["batch_index"] = list(range(batch_index, batch_index + length))
        return (out,)


class LatentBlend(Node):
    type = "LatentBlend"
    display_name = "Latent Blend"
    category = "_for_testing"
    description = "samples1 · blend_factor + samples2 · (1 − blend_factor); samples2 is resized to samples1."
    inputs = (Input("samples1", "LATENT"), Input("samples2", "LATENT"),
              Input("blend_factor", "FLOAT", default=0.5, min=0, max=1, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples1: dict[str, Any], samples2: dict[str, Any],
            blend_factor: float) -> tuple[Any, ...]:
        a, b = samples1["samples"], samples2["samples"]
        if a.shape != b.shape:
            b = resize(b, a.shape[3], a.shape[2], "bicubic", "center")
        return ({**samples1, "samples": a * blend_factor + b * (1 - blend_factor)},)


class SetLatentNoiseMask(Node):
    type = "SetLatentNoiseMask"
    display_name = "Set Latent Noise Mask"
    category = "latent/inpaint"
    description = "Attaches a mask: the sampler changes the latent only where the mask is above 0."
    inputs = (Input("samples", "LATENT"), Input("mask", "MASK"))
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, samples: dict[str, Any], mask: torch.Tensor) -> tuple[Any, ...]:
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


NODES = (LatentComposite, LatentCompositeMasked, RepeatLatentBatch, LatentFromBatch, LatentBlend,
         SetLatentNoiseMask)
