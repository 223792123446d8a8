"""KSampler glue: noise, classifier-free guidance, sigma slicing and inpainting masks around a sampler.

Device-agnostic: sampling math runs in float32 on `model.device`; only the UNet call is cast to `model.dtype`.
Noise is always drawn on the CPU so a seed gives the same image on any device (ComfyUI's convention).

The model protocol (`UNetModel`) is what the checkpoint loader provides; conditioning is ComfyUI's CONDITIONING
list `[[cond [1, T, D], {"pooled_output": ...}], ...]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from executor import hostmem

from .model_sampling import ModelSamplingDiscrete
from .samplers import SAMPLERS
from .schedules import SCHEDULERS, calculate_sigmas

SAMPLER_NAMES: list[str] = list(SAMPLERS)
SCHEDULER_NAMES: list[str] = list(SCHEDULERS)

Conditioning = Sequence[Sequence[Any]]
ProgressCallback = Callable[[int, int, torch.Tensor], None]


class UNetModel(Protocol):
    """What `ksample` needs from a loaded diffusion model."""

    model_sampling: ModelSamplingDiscrete
    latent_scale: float
    device: torch.device
    dtype: torch.dtype

    def apply_unet(self, x_in: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Epsilon prediction for x_in (already divided by sqrt(sigma^2 + 1)) at integer timesteps (float [B])."""
        ...


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Initial noise for `latent`'s shape: float32, on the CPU, from a fresh generator seeded with `seed`.

    With `batch_index` (a LATENT's "batch_index"), draws one [1, ...] tensor per index 0..max(batch_index) in order
    and picks the drawn ones, so item k of a batch gets the same noise as when it was generated at position k.
    """
    generator = torch.Generator().manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.shape, generator=generator, dtype=torch.float32)
    wanted = set(batch_index)
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(batch_index) + 1):
        noise = torch.randn([1, *latent.shape[1:]], generator=generator, dtype=torch.float32)
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in batch_index], dim=0)


def _repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat (or trim) along dim 0 to `batch` items, e.g. a [1, T, D] prompt for a batch of latents."""
    if t.shape[0] == batch:
        return t
    reps = math.ceil(batch / t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:batch]


def _to_token_length(context: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat whole CLIP chunks along the token axis so prompts of different chunk counts share one UNet batch.

    Cross-attention output is unchanged by repeating its keys/values k times (each copy gets 1/k of the weight).
    """
    return context.repeat(1, length // context.shape[1], 1)


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around the UNet, in the samplers' `model(x, sigma)` form.

    All prompt entries (positive and negative) go through one UNet call at batch n·B, negatives first as ComfyUI
    batches them. Several entries in one CONDITIONING are averaged (equal weights, no areas/masks/strengths:
    a simplification of ComfyUI's area composition, exact when every entry covers the whole image).
    With cfg == 1 the negative prompt is not evaluated at all.
    """

    def __init__(self, model: UNetModel, positive: Conditioning, negative: Conditioning | None, cfg: float) -> None:
        self.model = model
        self.cfg = cfg
        self.positive = [entry[0] for entry in positive]
        self.negative = [] if math.isclose(cfg, 1.0) or negative is None else [entry[0] for entry in negative]
        if not self.positive:
            raise ValueError("positive conditioning is empty")
        if not self.negative and not math.isclose(cfg, 1.0):
            raise ValueError("negative conditioning is empty but cfg != 1")

    def unet_denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)), UNet in model.dtype, result float32."""
        ms = self.model.model_sampling
        x_in = ms.calculate_input(sigma, x).to(self.model.dtype)
        timestep = ms.timestep(sigma).float()
        eps = self.model.apply_unet(x_in, timestep, context.to(device=x.device, dtype=self.model.dtype))
        return ms.calculate_denoised(sigma, eps.float(), x)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        batch = x.shape[0]
        entries = [*((True, c) for c in self.positive), *((False, c) for c in self.negative)][::-1]
        contexts = [_repeat_to_batch(c, batch) for _, c in entries]
        length = math.lcm(*(c.shape[1] for c in contexts))
        context = torch.cat([_to_token_length(c, length) for c in contexts])
        n = len(entries)
        out = self.unet_denoise(torch.cat([x] * n), torch.cat([sigma] * n), context).chunk(n)
        cond = [o for (is_pos, _), o in zip(entries, out, strict=True) if is_pos]
        uncond = [o for (is_pos, _), o in zip(entries, out, strict=True) if not is_pos]
        cond_pred = cond[0] if len(cond) == 1 else torch.stack(cond).sum(0) / len(cond)
        if not uncond:
            return cond_pred
        uncond_pred = uncond[0] if len(uncond) == 1 else torch.stack(uncond).sum(0) / len(uncond)
        return uncond_pred + (cond_pred - uncond_pred) * self.cfg


class _InpaintDenoiser:
    """Keeps the unmasked region on the input latent: before each call it is replaced by the input re-noised to the
    current sigma (with the same initial noise), after it the denoised estimate there is the input itself."""

    def __init__(self, inner: Callable[..., torch.Tensor], model_sampling: ModelSamplingDiscrete,
                 mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor) -> None:
        self.inner, self.ms, self.mask, self.latent, self.noise = inner, model_sampling, mask, latent, noise

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        keep = 1.0 - self.mask
        x = x * self.mask + self.ms.noise_scaling(sigma, self.noise, self.latent) * keep
        return self.inner(x, sigma, **kwargs) * self.mask + self.latent * keep


def prepare_mask(mask: torch.Tensor, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A [B, 1, h, w] / [B, h, w] / [h, w] mask resized bilinearly to the latent, expanded to its channels/batch."""
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    mask = F.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    return _repeat_to_batch(mask, shape[0]).to(device)


def ksample(
    model: UNetModel,
    noise: torch.Tensor | None,
    latent: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    *,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    seed: int = 0,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    disable_noise: bool = False,
    noise_mask: torch.Tensor | None = None,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Sample a LATENT with ComfyUI's KSampler / KSamplerAdvanced semantics; returns LATENT samples (unscaled,
    float32, on model.device).

    `latent` is in VAE space (LATENT "samples"); the sampler works on latent × model.latent_scale. `noise` defaults
    to `prepare_noise(latent, seed)`. Sigmas come from `calculate_sigmas`; `last_step` cuts the schedule after that
    many steps (ending at 0 if `force_full_denoise`), `start_step` skips the first steps (nothing left: the latent
    is returned unchanged). `callback(step_index, total_steps, denoised)` runs once per sampler step; `denoised` is
    the x0 estimate in the sampler's (scaled) latent space. The callback may raise to interrupt.
    """
    try:
        sampler = SAMPLERS[sampler_name]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler_name!r}; expected one of {SAMPLER_NAMES}") from None
    device = torch.device(model.device)
    ms = model.model_sampling
    latent = latent.to(device=device, dtype=torch.float32)

    sigmas = calculate_sigmas(ms, scheduler, steps, denoise, sampler_name)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return latent
        sigmas = sigmas[start_step:]
    if len(sigmas) <= 1:
        return latent
    sigmas = sigmas.to(device)

    if disable_noise:
        noise = torch.zeros_like(latent)
    elif noise is None:
        noise = prepare_noise(latent, seed)
    noise = noise.to(device=device, dtype=torch.float32)
    latent_in = latent * model.latent_scale

    sigma_max = float(ms.sigma_max)
    sigma0 = float(sigmas[0])
    # From the top of the schedule the start is drawn from the DDPM prior, whose std is sqrt(1 + sigma^2).
    max_denoise = math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max
    x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise)

    denoiser: Callable[..., torch.Tensor] = CFGDenoiser(model, positive, negative, cfg)
    mask = None
    if noise_mask is not None:
        mask = prepare_mask(noise_mask, latent.shape, device)
        denoiser = _InpaintDenoiser(denoiser, ms, mask, latent_in, noise)

    total = len(sigmas) - 1
    step_callback = None
    if callback is not None:
        def step_callback(info: dict[str, Any]) -> None:
            callback(info["i"], total, info["denoised"])

    with hostmem.reuse_heap():  # every step allocates the same activation sizes: keep them (executor/hostmem.py)
        samples = sampler(denoiser, x, sigmas, extra_args={"seed": seed}, callback=step_callback, disable=True)
    out = ms.inverse_noise_scaling(sigmas[-1], samples).float() / model.latent_scale
    if mask is not None:
        # Blended in VAE space so unmasked values come back bit-identical to the input latent.
        out = out * mask + latent * (1.0 - mask)
    return out
