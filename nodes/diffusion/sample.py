"""Sampling glue: noise, classifier-free guidance, sigma slicing and inpainting masks around a sampler.

Device-agnostic: sampling math runs in float32 on `model.device`; only the model call is cast to `model.dtype`.
Noise is always drawn on the CPU so a seed gives the same image on any device (ComfyUI's convention).

The model protocol (`conds.ConditionedModel`) is what the checkpoint loader provides; conditioning is ComfyUI's
CONDITIONING list `[[cond [1, T, D], {"pooled_output": ..., "area": ..., ...}], ...]` (see conds.py).
`sample_custom` is the core (given sigmas, a denoiser and a sampler function), `ksample` KSampler around it.
The model's weight patches (LoRA) are applied for the sampler's run only (`model.patched()`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

import hostmem

from .conds import CondEntry, ConditionedModel, Conditioning, combine, prepare, repeat_to_batch
from .model_sampling import ModelSamplingDiscrete
from .samplers import SAMPLERS
from .schedules import SCHEDULERS, calculate_sigmas

SAMPLER_NAMES: list[str] = list(SAMPLERS)
SCHEDULER_NAMES: list[str] = list(SCHEDULERS)

ProgressCallback = Callable[[int, int, torch.Tensor], None]


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


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around the model, in the samplers' `model(x, sigma)` form.

    Every entry of both CONDITIONINGs (with its areas, masks, strengths and timestep ranges, see conds.py) is
    evaluated per step, batched as ComfyUI batches them; with cfg == 1 the negative side is not evaluated.
    """

    def __init__(self, model: ConditionedModel, positive: Conditioning, negative: Conditioning | None, cfg: float,
                 noise_shape: Sequence[int] | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.use_negative = not math.isclose(cfg, 1.0) and negative is not None
        if not positive:
            raise ValueError("positive conditioning is empty")
        if not math.isclose(cfg, 1.0) and not negative:
            raise ValueError("negative conditioning is empty but cfg != 1")
        self._raw = (positive, negative)
        self._shape: tuple[int, ...] | None = None
        self.sampling_inputs: dict[str, Any] = {}  # latent_image, denoise_mask: set by sample_custom
        self.sides: list[list[CondEntry]] = []
        if noise_shape is not None:
            self._prepare(tuple(noise_shape))

    def set_sampling_inputs(self, **inputs: Any) -> None:
        """The sampled latent (scaled) and noise mask, for models whose inputs depend on them (inpainting)."""
        self.sampling_inputs.update(inputs)
        self._shape = None  # entries are prepared again with them at the next call

    def _prepare(self, shape: tuple[int, ...]) -> None:
        pos, neg = prepare(self.model, self._raw[0], self._raw[1] if self.use_negative else None, shape,
                           **self.sampling_inputs)
        self.sides = [pos, neg] if self.use_negative else [pos]
        self._shape = shape

    def unet_denoise(self, x: torch.Tensor, sigma: torch.Tensor, inputs: dict[str, torch.Tensor],
                     control: Any = None) -> torch.Tensor:
        """D(x; sigma) from the model's output at x / sqrt(sigma^2 + 1) and t(sigma); model in model.dtype,
        result float32."""
        ms = self.model.model_sampling
        x_in = ms.calculate_input(sigma, x).to(self.model.dtype)
        timestep = ms.timestep(sigma).float()
        inputs = {k: v.to(device=x.device, dtype=self.model.dtype if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items()}
        if control is None:
            out = self.model.apply_model(x_in, timestep, inputs)
        else:  # ControlNet residuals for this batch (its window is in sigmas)
            out = self.model.apply_model(x_in, timestep, inputs, control=control, sigma=float(sigma.reshape(-1)[0]))
        return ms.calculate_denoised(sigma, out.float(), x)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        if self._shape != tuple(x.shape):
            self._prepare(tuple(x.shape))
        preds = combine(self.model, self.sides, x, sigma, self.unet_denoise)
        if len(preds) == 1:
            return preds[0]
        cond_pred, uncond_pred = preds
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
    return repeat_to_batch(mask, shape[0]).to(device)


def ksample_sigmas(model_sampling: Any, *, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0,
                   start_step: int | None = None, last_step: int | None = None,
                   force_full_denoise: bool = False) -> torch.Tensor:
    """The sigmas KSampler / KSamplerAdvanced run: `calculate_sigmas`, cut after `last_step` steps (ending at 0
    if `force_full_denoise`), the first `start_step` skipped (nothing left: one sigma or none)."""
    sigmas = calculate_sigmas(model_sampling, scheduler, steps, denoise, sampler_name)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return sigmas[-1:]
        sigmas = sigmas[start_step:]
    return sigmas


def sample_custom(
    model: ConditionedModel,
    denoiser: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    latent: torch.Tensor,
    sampler: Callable[..., torch.Tensor],
    sigmas: torch.Tensor,
    *,
    seed: int | None = 0,
    noise_mask: torch.Tensor | None = None,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """Run `sampler` (a k-diffusion style function) over `sigmas` with `denoiser`; returns LATENT samples
    (unscaled, float32, on model.device).

    `latent` is in VAE space (LATENT "samples"); the sampler works on latent × model.latent_scale. Fewer than two
    sigmas: the latent comes back unchanged. `callback(step_index, total_steps, denoised)` runs once per sampler
    step; `denoised` is the x0 estimate in the sampler's (scaled) latent space. The callback may raise to interrupt.
    """
    device = torch.device(model.device)
    ms = model.model_sampling
    latent = latent.to(device=device, dtype=torch.float32)
    if len(sigmas) <= 1:
        return latent
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    noise = noise.to(device=device, dtype=torch.float32)
    latent_in = latent * model.latent_scale

    sigma_max = float(ms.sigma_max)
    sigma0 = float(sigmas[0])
    # From the top of the schedule the start is drawn from the DDPM prior, whose std is sqrt(1 + sigma^2).
    max_denoise = math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max
    x = ms.noise_scaling(sigmas[0], noise, latent_in, max_denoise)

    mask = None
    if noise_mask is not None:
        mask = prepare_mask(noise_mask, latent.shape, device)
    if isinstance(denoiser, CFGDenoiser):  # what inpainting UNets read besides x
        denoiser.set_sampling_inputs(latent_image=latent_in, denoise_mask=mask)
    if mask is not None:
        denoiser = _InpaintDenoiser(denoiser, ms, mask, latent_in, noise)

    total = len(sigmas) - 1
    step_callback = None
    if callback is not None:
        def step_callback(info: dict[str, Any]) -> None:
            callback(info["i"], total, info["denoised"])

    patched = getattr(model, "patched", contextlib.nullcontext)
    # every step allocates the same activation sizes: keep them (hostmem.py)
    with patched(), hostmem.reuse_heap():
        samples = sampler(denoiser, x, sigmas, extra_args={"seed": seed}, callback=step_callback, disable=True)
    out = ms.inverse_noise_scaling(sigmas[-1], samples).float() / model.latent_scale
    if mask is not None:
        # Where nothing may change (mask 0) the input latent comes back bit-identical; the sampler's last step
        # already blended every other pixel (D·m + latent·(1 − m)), so blending again would move fractional ones.
        out = torch.where(mask == 0, latent, out)
    return out


def get_sampler(sampler_name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[sampler_name]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler_name!r}; expected one of {SAMPLER_NAMES}") from None


def ksample(
    model: ConditionedModel,
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
    """Sample a LATENT with ComfyUI's KSampler / KSamplerAdvanced semantics (see `ksample_sigmas` and
    `sample_custom`). `noise` defaults to `prepare_noise(latent, seed)`."""
    sampler = get_sampler(sampler_name)
    sigmas = ksample_sigmas(model.model_sampling, sampler_name=sampler_name, scheduler=scheduler, steps=steps,
                            denoise=denoise, start_step=start_step, last_step=last_step,
                            force_full_denoise=force_full_denoise)
    if disable_noise:
        noise = torch.zeros_like(latent, dtype=torch.float32)
    elif noise is None:
        noise = prepare_noise(latent, seed)
    denoiser = CFGDenoiser(model, positive, negative, cfg)
    return sample_custom(model, denoiser, noise, latent, sampler, sigmas, seed=seed, noise_mask=noise_mask,
                         callback=callback)
