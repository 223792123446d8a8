"""Sigma schedules: which noise levels a sampler visits.

Every scheduler has the signature `(model_sampling, steps) -> 1-D float32 tensor` of `steps + 1` sigmas, from
high to low, ending in 0. The arithmetic (float32 vs float64, which library call) follows what ComfyUI does so
that the sigmas are bit-identical to its own; `tests/parity/reference/comfy_run.json` holds the numbers it used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .model_sampling import ModelSamplingDiscrete

Scheduler = Callable[[ModelSamplingDiscrete, int], torch.Tensor]


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def simple(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """Training sigmas taken from the top at a stride of len(sigmas) / steps, then 0 (ComfyUI's "simple")."""
    sigmas = model_sampling.sigmas
    stride = len(sigmas) / steps
    picked = [float(sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def _uniform_timesteps(model_sampling: ModelSamplingDiscrete, steps: int, sgm: bool) -> torch.Tensor:
    """Timesteps evenly spaced from the sigma_max step down to the sigma_min step, mapped back to sigmas."""
    start = model_sampling.timestep(model_sampling.sigma_max)
    end = model_sampling.timestep(model_sampling.sigma_min)
    append_zero = True
    if sgm:
        # SGM style: steps + 1 points with the last (end) one dropped, so the final sigma is above sigma_min.
        timesteps = torch.linspace(float(start), float(end), steps + 1)[:-1]
    else:
        if math.isclose(float(model_sampling.sigma(end)), 0.0, abs_tol=1e-5):
            # A schedule whose smallest sigma is already ~0 ends on it instead of appending another 0.
            steps += 1
            append_zero = False
        timesteps = torch.linspace(float(start), float(end), steps)
    sigmas = [float(model_sampling.sigma(t)) for t in timesteps]
    if append_zero:
        sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float32)


def normal(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """Timesteps evenly spaced 999 -> 0 (fractional steps interpolated in log sigma), then 0.

    This is k-diffusion's `get_sigmas` for discrete models (CompVis/LDM "uniform" DDIM-style spacing).
    """
    return _uniform_timesteps(model_sampling, steps, sgm=False)


def sgm_uniform(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """Like `normal` but spaced over steps + 1 points with the last dropped (Stability's SGM discretisation)."""
    return _uniform_timesteps(model_sampling, steps, sgm=True)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 ("Elucidating the Design Space...", eq. 5): sigma^(1/rho) linear in the step, then 0."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    # Evaluated in float32 in this exact order: the parity sigmas (e.g. 14.614643, not 14.614641) depend on it.
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def karras(model_sampling: ModelSamplingDiscrete, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras sigmas over the model's own sigma range, rho 7."""
    return karras_sigmas(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max), rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0 (k-diffusion's exponential)."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def exponential(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """Exponential sigmas over the model's own sigma range."""
    return exponential_sigmas(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


def ddim_uniform(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """DDIM's "uniform" timesteps (Song et al. 2021): indices 1, 1 + c, 1 + 2c, ... with c = 1000 // steps.

    Highest first, then 0. Note it starts at index 1 + (steps - 1) * c, not at the top of the schedule.
    """
    sigmas = model_sampling.sigmas
    first = 1
    if math.isclose(float(sigmas[first]), 0.0, abs_tol=1e-5):
        steps += 1
        picked: list[float] = []
    else:
        picked = [0.0]
    stride = max(len(sigmas) // steps, 1)
    picked += [float(sigmas[i]) for i in range(first, len(sigmas), stride)]
    return torch.tensor(picked[::-1], dtype=torch.float32)


def beta(model_sampling: ModelSamplingDiscrete, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at quantiles of a Beta(0.6, 0.6) distribution, denser at both ends.

    Lee et al. 2024, "Beta Sampling is All You Need" (arXiv:2407.12173). Rounded timesteps that repeat are
    visited once, so the result can have fewer than steps + 1 sigmas.
    """
    total = len(model_sampling.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    import scipy.stats  # imported here: about 0.3 s that only this scheduler needs

    timesteps = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta) * total)
    picked: list[float] = []
    last = -1.0
    for t in timesteps:
        if t != last:
            picked.append(float(model_sampling.sigmas[int(t)]))
        last = t
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def linear_quadratic(
    model_sampling: ModelSamplingDiscrete, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Genmo Mochi 1's linear-then-quadratic schedule, scaled by sigma_max.

    The first half of the steps lowers the noise fraction linearly to `threshold_noise`, the rest follows a
    quadratic that meets it with matching slope and ends at 1 (i.e. sigma 0).
    """
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - f for f in [*linear, *quadratic, 1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * model_sampling.sigma_max.cpu()


def kl_optimal(model_sampling: ModelSamplingDiscrete, steps: int) -> torch.Tensor:
    """KL-optimal schedule from Sabour et al. 2024, "Align Your Steps" (arXiv:2404.14507), Theorem 1.

    sigma_i = tan((1 - i/(n-1)) * atan(sigma_max) + i/(n-1) * atan(sigma_min)), then 0.
    """
    sigma_min, sigma_max = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    frac = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    sigmas = torch.zeros(steps + 1)
    sigmas[:-1] = (frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).tan_()
    return sigmas


# ComfyUI's order, which is also the order of the scheduler combo box.
SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}

# Samplers that take two model evaluations per step towards the next sigma: their schedule is computed for one
# more step and the second-to-last sigma removed, so the final (small) step is not wasted.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _schedule(
    model_sampling: ModelSamplingDiscrete, scheduler: str, steps: int, sampler_name: str | None
) -> torch.Tensor:
    try:
        fn = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {list(SCHEDULERS)}") from None
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = fn(model_sampling, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return fn(model_sampling, steps)


def calculate_sigmas(
    model_sampling: ModelSamplingDiscrete,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    sampler_name: str | None = None,
) -> torch.Tensor:
    """The sigmas KSampler runs: `steps + 1` values, or fewer when `denoise < 1` starts part way down.

    Partial denoise computes the schedule for int(steps / denoise) steps and keeps its last steps + 1 sigmas,
    so the low-noise end is identical to a full run of that length; denoise <= 0 gives an empty tensor.
    """
    if denoise is None or denoise > 0.9999:
        return _schedule(model_sampling, scheduler, steps, sampler_name)
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    sigmas = _schedule(model_sampling, scheduler, int(steps / denoise), sampler_name)
    return sigmas[-(steps + 1):]
