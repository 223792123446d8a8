"""Custom sampling: the SAMPLER, SIGMAS, NOISE and GUIDER sockets and the samplers that take them, with ComfyUI's
names, inputs and defaults (SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, the scheduler nodes,
SplitSigmas, RandomNoise, DisableNoise, CFGGuider, BasicGuider)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from executor.schema import Determinism, Input, Node, Output

from . import preview
from .diffusion.sample import SAMPLER_NAMES, SCHEDULER_NAMES, CFGDenoiser, get_sampler, prepare_noise, sample_custom
from .sampling import CFG, SEED

SIGMA = {"min": 0.0, "max": 5000.0, "step": 0.01, "round": False}


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampling algorithm by name."""

    name: str

    def function(self) -> Any:
        return get_sampler(self.name)


@dataclass(frozen=True)
class Noise:
    """NOISE: the initial noise for a LATENT; `seed` None means no noise (DisableNoise)."""

    seed: int | None

    def generate(self, latent: dict[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        if self.seed is None:
            return torch.zeros(samples.shape, dtype=torch.float32)
        return prepare_noise(samples, self.seed, latent.get("batch_index"))


@dataclass(frozen=True)
class Guider:
    """GUIDER: the model and the conditioning it is guided by (negative None: the positive alone, cfg 1)."""

    model: Any
    positive: list
    negative: list | None
    cfg: float

    def denoiser(self) -> CFGDenoiser:
        return CFGDenoiser(self.model, self.positive, self.negative, self.cfg)


def _run(ctx: Any, guider: Guider, noise: Noise, sampler: Sampler, sigmas: torch.Tensor,
         latent: dict[str, Any]) -> tuple[Any, ...]:
    """Both outputs: the sampled LATENT and the last step's x0 estimate (the output itself if nothing ran)."""
    wants_previews = bool(getattr(ctx, "wants_previews", False))
    family, method = getattr(guider.model, "family", None), getattr(ctx, "preview_method", None)
    last: dict[str, torch.Tensor] = {}

    def on_step(step: int, total: int, denoised: torch.Tensor) -> None:
        last["x0"] = denoised
        ctx.progress(step + 1, total, preview.preview_image(denoised, family, method) if wants_previews else None)

    model = guider.model
    out = sample_custom(model, guider.denoiser(), noise.generate(latent), latent["samples"], sampler.function(),
                        sigmas, seed=noise.seed if noise.seed is not None else 0,
                        noise_mask=latent.get("noise_mask"), callback=on_step)
    result = {**latent, "samples": out}
    denoised = {**latent, "samples": last["x0"].float() / model.latent_scale} if "x0" in last else result
    return (result, denoised)


class SamplerCustom(Node):
    type = "SamplerCustom"
    category = "sampling/custom_sampling"
    determinism = Determinism.SEEDED
    inputs = (Input("model", "MODEL"), Input("add_noise", "BOOLEAN", default=True), Input("noise_seed", "INT", **SEED),
              Input("cfg", "FLOAT", **CFG), Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("sampler", "SAMPLER"), Input("sigmas", "SIGMAS"), Input("latent_image", "LATENT"))
    outputs = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def run(self, ctx: Any, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: list,
            negative: list, sampler: Sampler, sigmas: torch.Tensor, latent_image: dict[str, Any]) -> tuple[Any, ...]:
        noise = Noise(noise_seed if add_noise else None)
        out = _run(ctx, Guider(model, positive, negative, cfg), noise, sampler, sigmas, latent_image)
        return out


class SamplerCustomAdvanced(Node):
    type = "SamplerCustomAdvanced"
    category = "sampling/custom_sampling"
    inputs = (Input("noise", "NOISE"), Input("guider", "GUIDER"), Input("sampler", "SAMPLER"),
              Input("sigmas", "SIGMAS"), Input("latent_image", "LATENT"))
    outputs = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def run(self, ctx: Any, noise: Noise, guider: Guider, sampler: Sampler, sigmas: torch.Tensor,
            latent_image: dict[str, Any]) -> tuple[Any, ...]:
        return _run(ctx, guider, noise, sampler, sigmas, latent_image)


class KSamplerSelect(Node):
    type = "KSamplerSelect"
    category = "sampling/custom_sampling/samplers"
    inputs = (Input("sampler_name", "COMBO", options=SAMPLER_NAMES),)
    outputs = (Output("SAMPLER"),)

    def run(self, ctx: Any, sampler_name: str) -> tuple[Any, ...]:
        return (Sampler(sampler_name),)


class BasicScheduler(Node):
    type = "BasicScheduler"
    category = "sampling/custom_sampling/schedulers"
    inputs = (Input("model", "MODEL"), Input("scheduler", "COMBO", options=SCHEDULER_NAMES),
              Input("steps", "INT", default=20, min=1, max=10000),
              Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx: Any, model: Any, scheduler: str, steps: int, denoise: float) -> tuple[Any, ...]:
        from .diffusion.schedules import calculate_sigmas

        if denoise <= 0.0:
            return (torch.zeros(0, dtype=torch.float32),)
        total = steps if denoise >= 1.0 else int(steps / denoise)
        return (calculate_sigmas(model.model_sampling, scheduler, total).cpu()[-(steps + 1):],)


class KarrasScheduler(Node):
    type = "KarrasScheduler"
    category = "sampling/custom_sampling/schedulers"
    inputs = (Input("steps", "INT", default=20, min=1, max=10000),
              Input("sigma_max", "FLOAT", default=14.614642, **SIGMA),
              Input("sigma_min", "FLOAT", default=0.0291675, **SIGMA),
              Input("rho", "FLOAT", default=7.0, min=0.0, max=100.0, step=0.01, round=False))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx: Any, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any, ...]:
        from .diffusion.schedules import karras_sigmas

        return (karras_sigmas(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    type = "ExponentialScheduler"
    category = "sampling/custom_sampling/schedulers"
    inputs = (Input("steps", "INT", default=20, min=1, max=10000),
              Input("sigma_max", "FLOAT", default=14.614642, **SIGMA),
              Input("sigma_min", "FLOAT", default=0.0291675, **SIGMA))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx: Any, steps: int, sigma_max: float, sigma_min: float) -> tuple[Any, ...]:
        from .diffusion.schedules import exponential_sigmas

        return (exponential_sigmas(steps, sigma_min, sigma_max),)


class SDTurboScheduler(Node):
    type = "SDTurboScheduler"
    category = "sampling/custom_sampling/schedulers"
    description = "SD-Turbo / SDXL-Turbo timesteps 999, 899, ... (one step per 100), then sigma 0."
    inputs = (Input("model", "MODEL"), Input("steps", "INT", default=1, min=1, max=10),
              Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("SIGMAS"),)

    def run(self, ctx: Any, model: Any, steps: int, denoise: float) -> tuple[Any, ...]:
        start = 10 - int(10 * denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
        sigmas = model.model_sampling.sigma(timesteps).float().cpu()
        return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


class SplitSigmas(Node):
    type = "SplitSigmas"
    category = "sampling/custom_sampling/sigmas"
    inputs = (Input("sigmas", "SIGMAS"), Input("step", "INT", default=0, min=0, max=10000))
    outputs = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def run(self, ctx: Any, sigmas: torch.Tensor, step: int) -> tuple[Any, ...]:
        return (sigmas[:step + 1], sigmas[step:])  # the split sigma ends the first part and starts the second


class RandomNoise(Node):
    type = "RandomNoise"
    category = "sampling/custom_sampling/noise"
    determinism = Determinism.SEEDED
    inputs = (Input("noise_seed", "INT", **SEED),)
    outputs = (Output("NOISE"),)

    def run(self, ctx: Any, noise_seed: int) -> tuple[Any, ...]:
        return (Noise(noise_seed),)


class DisableNoise(Node):
    type = "DisableNoise"
    category = "sampling/custom_sampling/noise"
    outputs = (Output("NOISE"),)

    def run(self, ctx: Any) -> tuple[Any, ...]:
        return (Noise(None),)


class CFGGuider(Node):
    type = "CFGGuider"
    category = "sampling/custom_sampling/guiders"
    inputs = (Input("model", "MODEL"), Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("cfg", "FLOAT", **CFG))
    outputs = (Output("GUIDER"),)

    def run(self, ctx: Any, model: Any, positive: list, negative: list, cfg: float) -> tuple[Any, ...]:
        return (Guider(model, positive, negative, cfg),)


class BasicGuider(Node):
    type = "BasicGuider"
    category = "sampling/custom_sampling/guiders"
    inputs = (Input("model", "MODEL"), Input("conditioning", "CONDITIONING"))
    outputs = (Output("GUIDER"),)

    def run(self, ctx: Any, model: Any, conditioning: list) -> tuple[Any, ...]:
        return (Guider(model, conditioning, None, 1.0),)


NODES = (SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, BasicScheduler, KarrasScheduler,
         ExponentialScheduler, SDTurboScheduler, SplitSigmas, RandomNoise, DisableNoise, CFGGuider, BasicGuider)
