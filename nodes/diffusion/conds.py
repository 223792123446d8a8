"""From CONDITIONING to model calls: everything an entry holds beyond its cross-attention tensor.

A CONDITIONING is ComfyUI's list `[[cond [1, T, D], {pooled_output, area, strength, mask, mask_strength,
start_percent, end_percent, width, height, ...}], ...]`. `prepare` turns each entry into a `CondEntry`: the
model's own inputs for it (`model.model_inputs`: the context, SDXL's pooled output and size values, ...), the
latent region it covers, its weight there, and the sigma window in which it is active. `combine` runs the model
on every active entry, batched where shapes allow, and blends their denoised outputs per pixel:

    D(x) = Σ_entries mult_e · D_e(x[area_e]) / Σ_entries mult_e   (per side: positive, negative)

with mult = strength × (the mask resized to the latent, or a feathered ramp at an area's inner edges). This is
ComfyUI's area composition, described from its behaviour (see shared/reference/parity-next/README.md):
- areas are (h, w, y, x) in latent units; percentage areas resolve against the latent at sampling time;
- the feather: on each side of an area that lies inside the image, the outermost rr = min(8, size // 4) rows or
  columns are weighted 1/rr, 2/rr, ...; entries with a mask get no feather;
- for every entry with an area, the other side gets a copy of it carrying the model inputs of its smallest entry
  that contains the area (unless one with exactly that area exists), so both sides cover the same regions;
- the cfg batch order is reversed (negative rows first), as ComfyUI batches them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

Conditioning = Sequence[Sequence[Any]]
FEATHER = 8


class ConditionedModel(Protocol):
    """What `combine` needs from a MODEL (nodes/models.py `DiffusionModel`)."""

    model_sampling: Any
    device: torch.device
    dtype: torch.dtype

    def model_inputs(self, cond: torch.Tensor, extras: Mapping[str, Any], noise_shape: Sequence[int],
                     prompt_type: str) -> dict[str, torch.Tensor]:
        """Batch-first model inputs of one entry (`context` and whatever the family needs). Models with
        `concat_channels` (inpainting UNets) also take `latent_image=` and `denoise_mask=` keywords."""
        ...

    def apply_model(self, x_in: torch.Tensor, timestep: torch.Tensor, inputs: Mapping[str, torch.Tensor]) \
            -> torch.Tensor:
        """The network's output (eps, v or x0) for scaled input x_in at (float) integer timesteps. Entries with a
        ControlNet control are called with `control=` and `sigma=` as well."""
        ...


@dataclass
class CondEntry:
    inputs: dict[str, torch.Tensor]
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x), latent units
    strength: float = 1.0
    mask: torch.Tensor | None = None  # [B', h, w] resized to the latent
    mask_strength: float = 1.0
    sigma_start: float = math.inf  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    control: Any = None  # a controlnet.Control (ControlNetApply…): residuals computed at each model call


def _resolve_area(area: Sequence[Any], dims: tuple[int, int]) -> tuple[int, int, int, int]:
    if area[0] == "percentage":  # ("percentage", h, w, y, x) as fractions of the latent
        h, w, y, x = (float(a) for a in area[1:])
        return (max(1, round(h * dims[0])), max(1, round(w * dims[1])), round(y * dims[0]), round(x * dims[1]))
    h, w, y, x = (int(a) for a in area)
    return (h, w, y, x)


def _resolve_mask(mask: torch.Tensor, dims: tuple[int, int], device: torch.device) -> torch.Tensor:
    mask = mask.to(device=device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != dims:
        mask = F.interpolate(mask.unsqueeze(1), size=dims, mode="bilinear", align_corners=False).squeeze(1)
    return mask


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """ConditioningSetMask's "mask bounds": the area of the mask's nonzero box, at least 8 × 8 latent pixels
    (an all-zero mask gives 8 × 8 at the origin, a no-op)."""
    bounds = mask.abs().max(dim=0).values
    ys, xs = torch.nonzero(bounds, as_tuple=True)
    if len(ys) == 0:
        return (8, 8, 0, 0)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether area a lies inside area b."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def _add_equal_areas(side: list[CondEntry], other: list[CondEntry]) -> None:
    """For each entry of `side` with an area, give `other` an entry for the same area (ComfyUI's uncond copies)."""
    for entry in list(side):
        if entry.area is None:
            continue
        smallest: CondEntry | None = None
        for cand in other:
            if cand.area is not None:
                if _inside(entry.area, cand.area) and (
                        smallest is None or smallest.area is None
                        or smallest.area[0] * smallest.area[1] > cand.area[0] * cand.area[1]):
                    smallest = cand
            elif smallest is None:
                smallest = cand
        if smallest is None or smallest.area == entry.area:
            continue
        other.append(replace(entry, inputs=dict(smallest.inputs)))


def prepare(model: ConditionedModel, positive: Conditioning, negative: Conditioning | None,
            noise_shape: Sequence[int], **sampling: Any) -> tuple[list[CondEntry], list[CondEntry]]:
    """The entries of both sides, resolved against the latent's shape `noise_shape` ([B, C, h, w]). `sampling`
    (latent_image, denoise_mask) reaches models that read more than the conditioning (inpainting UNets)."""
    if not getattr(model, "concat_channels", 0):
        sampling = {}
    dims = (int(noise_shape[2]), int(noise_shape[3]))
    ms = model.model_sampling
    sides: list[list[CondEntry]] = []
    for conditioning, prompt_type in ((positive, "positive"), (negative or [], "negative")):
        entries = []
        for cond, extras in ((c[0], c[1] if len(c) > 1 else {}) for c in conditioning):
            e = CondEntry(model.model_inputs(cond, extras, noise_shape, prompt_type, **sampling), extras=dict(extras))
            if extras.get("area") is not None:
                e.area = _resolve_area(extras["area"], dims)
            e.strength = float(extras.get("strength", 1.0))
            if extras.get("mask") is not None:
                e.mask = _resolve_mask(extras["mask"], dims, model.device)
                e.mask_strength = float(extras.get("mask_strength", 1.0))
                if extras.get("set_area_to_bounds"):
                    e.area = _mask_bounds(e.mask)
            if "start_percent" in extras:
                e.sigma_start = ms.percent_to_sigma(float(extras["start_percent"]))
            if "end_percent" in extras:
                e.sigma_end = ms.percent_to_sigma(float(extras["end_percent"]))
            e.control = extras.get("control")
            entries.append(e)
        sides.append(entries)
    pos, neg = sides
    # ControlNetApply (the old node) controls the negative side too: full-frame negatives without a control of
    # their own get the positive side's, unless some negative entry has one (ComfyUI's rule)
    shared = [e.control for e in pos if e.control is not None and e.area is None
              and e.extras.get("control_apply_to_uncond")]
    if shared and not any(e.control is not None for e in neg if e.area is None):
        plain = [i for i, e in enumerate(neg) if e.area is None]
        for k, control in enumerate(shared):
            if plain:
                i = plain[k % len(plain)]
                neg[i] = replace(neg[i], control=control)
    _add_equal_areas(pos, neg)
    _add_equal_areas(neg, pos)
    return pos, neg


def _crop(entry: CondEntry, x: torch.Tensor) -> tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]:
    """(area clipped to the latent, x cropped to it, the per-pixel weight there)."""
    H, W = x.shape[2], x.shape[3]
    if entry.area is None:
        area = (H, W, 0, 0)
    else:
        h, w, y, x0 = entry.area
        area = (min(H - y, h), min(W - x0, w), y, x0)
    h, w, y, x0 = area
    x_in = x[:, :, y:y + h, x0:x0 + w]
    if entry.mask is not None:
        mask = entry.mask[: x.shape[0], y:y + h, x0:x0 + w] * entry.mask_strength
        mult = mask.unsqueeze(1).repeat(x.shape[0] // mask.shape[0], x.shape[1], 1, 1) * entry.strength
    else:
        mult = torch.ones_like(x_in) * entry.strength
        if entry.area is not None:
            for dim, (size, start, full) in enumerate(((h, y, H), (w, x0, W))):
                rr = min(FEATHER, size // 4)
                for t in range(rr):
                    if start != 0:
                        mult.narrow(dim + 2, t, 1).mul_((1.0 / rr) * (t + 1))
                    if size + start < full:
                        mult.narrow(dim + 2, size - 1 - t, 1).mul_((1.0 / rr) * (t + 1))
    return area, x_in, mult


def _concat_inputs(inputs: list[dict[str, torch.Tensor]], batch: int) -> dict[str, torch.Tensor]:
    out = {}
    for key in inputs[0]:
        parts = [repeat_to_batch(i[key], batch) for i in inputs]
        if key == "context":
            length = math.lcm(*(p.shape[1] for p in parts))
            parts = [p.repeat(1, length // p.shape[1], 1) for p in parts]
        out[key] = torch.cat(parts)
    return out


def repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat (or trim) along dim 0 to `batch` items, e.g. a [1, T, D] prompt for a batch of latents."""
    if t.shape[0] == batch:
        return t
    reps = math.ceil(batch / t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:batch]


def _compatible(a: tuple[torch.Tensor, dict[str, torch.Tensor]], b: tuple[torch.Tensor, dict[str, torch.Tensor]]) \
        -> bool:
    """One batch only for equal crops and inputs that concatenate (contexts of different token counts repeat
    whole chunks up to their least common multiple, at most 4 times the shorter, as ComfyUI allows)."""
    if a[0].shape != b[0].shape or a[1].keys() != b[1].keys():
        return False
    for key, t in a[1].items():
        u = b[1][key]
        if key == "context" and t.shape != u.shape:
            if t.shape[0] != u.shape[0] or t.shape[2] != u.shape[2]:
                return False
            if math.lcm(t.shape[1], u.shape[1]) // min(t.shape[1], u.shape[1]) > 4:
                return False
        elif t.shape != u.shape:
            return False
    return True


def combine(model: ConditionedModel, sides: Sequence[Sequence[CondEntry]], x: torch.Tensor, sigma: torch.Tensor,
            denoise: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]) \
        -> list[torch.Tensor]:
    """Per side, the mult-weighted average of the entries' denoised outputs (`denoise(x_crop, sigma, inputs)`)."""
    s = float(sigma.reshape(-1)[0])
    to_run = []
    for side, entries in enumerate(sides):
        for e in entries:
            if s > e.sigma_start or s < e.sigma_end:
                continue
            area, x_in, mult = _crop(e, x)
            inputs = e.inputs
            if "concat" in inputs and e.area is not None:  # noise-shaped inputs are cropped like x
                h, w, y, x0 = area
                inputs = {**inputs, "concat": inputs["concat"][:, :, y:y + h, x0:x0 + w]}
            to_run.append((side, area, x_in, mult, inputs, e.control))
    outs = [torch.zeros_like(x) for _ in sides]
    counts = [torch.full_like(x, 1e-37) for _ in sides]
    while to_run:
        first = to_run[0]
        batch = [r for r in to_run if r[5] is first[5] and _compatible((r[2], r[4]), (first[2], first[4]))][::-1]
        to_run = [r for r in to_run if not any(r is b for b in batch)]
        n = x.shape[0]
        x_in = torch.cat([b[2] for b in batch])
        inputs = _concat_inputs([b[4] for b in batch], n)
        sigmas = torch.cat([sigma] * len(batch))
        out = (denoise(x_in, sigmas, inputs) if first[5] is None else denoise(x_in, sigmas, inputs, first[5]))
        out = out.chunk(len(batch))
        for (side, (h, w, y, x0), _, mult, _, _), o in zip(batch, out, strict=True):
            outs[side][:, :, y:y + h, x0:x0 + w] += o * mult
            counts[side][:, :, y:y + h, x0:x0 + w] += mult
    return [o / c for o, c in zip(outs, counts, strict=True)]
