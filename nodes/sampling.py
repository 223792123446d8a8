"""Samplers: KSampler and KSamplerAdvanced, with ComfyUI's names, inputs and seed conventions."""
from __future__ import annotations

from typing import Any

from executor.schema import Determinism, Input, Node, Output

from . import preview
from .diffusion.sample import SAMPLER_NAMES, SCHEDULER_NAMES, ksample, prepare_noise

SEED = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "extra": {"control_after_generate": True},
            "tooltip": "The random seed; noise is drawn on the CPU so a seed gives the same image on any device."}
STEPS = {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of denoising steps."}
CFG = {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
           "tooltip": "Classifier-free guidance scale; 1.0 skips the negative prompt."}


def _sample(ctx: Any, model: Any, seed: int, latent: dict[str, Any], **kwargs: Any) -> tuple[Any, ...]:
    samples = latent["samples"]
    noise = prepare_noise(samples, seed, latent.get("batch_index"))

    wants_previews = bool(getattr(ctx, "wants_previews", False))

    method = getattr(ctx, "preview_method", None)

    def on_step(step: int, total: int, denoised: Any) -> None:
        # `denoised` is the x0 estimate in the scaled latent space, which is what both preview methods take.
        image = preview.preview_image(denoised, model.family, method) if wants_previews else None
        ctx.progress(step + 1, total, image)

    out = ksample(model, noise, samples, seed=seed, noise_mask=latent.get("noise_mask"), callback=on_step,
                  **kwargs)
    return ({**latent, "samples": out},)


class KSampler(Node):
    type = "KSampler"
    category = "sampling"
    description = "Denoises a latent image with the given model, prompts, sampler and schedule."
    determinism = Determinism.SEEDED
    inputs = (
        Input("model", "MODEL", tooltip="The model used for denoising the input latent."),
        Input("seed", "INT", **SEED),
        Input("steps", "INT", **STEPS),
        Input("cfg", "FLOAT", **CFG),
        Input("sampler_name", "COMBO", options=SAMPLER_NAMES, tooltip="The sampling algorithm."),
        Input("scheduler", "COMBO", options=SCHEDULER_NAMES, tooltip="How the noise levels are spaced."),
        Input("positive", "CONDITIONING", tooltip="What to include in the image."),
        Input("negative", "CONDITIONING", tooltip="What to exclude from the image."),
        Input("latent_image", "LATENT", tooltip="The latent image to denoise."),
        Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01,
              tooltip="How much of the input is replaced; below 1 keeps its structure (img2img)."),
    )
    outputs = (Output("LATENT", tooltip="The denoised latent."),)

    def run(self, ctx: Any, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive: Any, negative: Any, latent_image: dict[str, Any], denoise: float) -> tuple[Any, ...]:
        return _sample(ctx, model, seed, latent_image, positive=positive, negative=negative, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, steps=steps, denoise=denoise)


class KSamplerAdvanced(Node):
    type = "KSamplerAdvanced"
    display_name = "KSampler (Advanced)"
    category = "sampling"
    description = "KSampler with control over noise and the range of steps run."
    determinism = Determinism.SEEDED
    inputs = (
        Input("model", "MODEL"),
        Input("add_noise", "COMBO", options=["enable", "disable"]),
        Input("noise_seed", "INT", **SEED),
        Input("steps", "INT", **STEPS),
        Input("cfg", "FLOAT", **CFG),
        Input("sampler_name", "COMBO", options=SAMPLER_NAMES),
        Input("scheduler", "COMBO", options=SCHEDULER_NAMES),
        Input("positive", "CONDITIONING"),
        Input("negative", "CONDITIONING"),
        Input("latent_image", "LATENT"),
        Input("start_at_step", "INT", default=0, min=0, max=10000),
        Input("end_at_step", "INT", default=10000, min=0, max=10000),
        Input("return_with_leftover_noise", "COMBO", options=["disable", "enable"]),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx: Any, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, positive: Any, negative: Any, latent_image: dict[str, Any],
            start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple[Any, ...]:
        return _sample(ctx, model, noise_seed, latent_image, positive=positive, negative=negative, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, steps=steps, denoise=1.0,
                       start_step=start_at_step, last_step=end_at_step,
                       force_full_denoise=return_with_leftover_noise != "enable",
                       disable_noise=add_noise == "disable")


NODES = (KSampler, KSamplerAdvanced)
