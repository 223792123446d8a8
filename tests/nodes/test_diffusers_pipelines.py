"""Sumi against diffusers' own reference pipelines, where no ComfyUI reference exists: SDXL txt2img
(StableDiffusionXLPipeline), ControlNet (StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline),
a 9-channel inpainting model (StableDiffusionInpaintPipeline) and LoRA (`load_lora_weights` + `fuse_lora`, kohya
and diffusers/PEFT files), on Sumi's tiny seeded files.

Both sides read the same file: Sumi through its executor (API-format workflows, KSampler), diffusers through
`from_single_file` with its own weight conversion (tests/diffusers_ref.py). Settings are made to agree where
ComfyUI's conventions, which Sumi follows, and diffusers' defaults differ:
- timesteps: KSampler's euler/normal with 4 steps runs at the integer timesteps 999, 666, 333, 0 (the UNet gets the
  index of the nearest training sigma, ComfyUI's rule); diffusers gets exactly those as `timesteps=`, so its
  EulerDiscreteScheduler interpolates the same training sigmas and feeds the UNet the same t (other step counts
  give fractional timesteps, which the two treat differently);
- initial noise: Sumi draws randn on the CPU from the seed and scales it by sqrt(1 + sigma_max²) at the top of the
  schedule; diffusers gets the same randn as `latents=` and scales it by `init_noise_sigma`, which is that value
  with "leading" timestep spacing (the scheduler config written for it);
- prompts: plain text, no weighting syntax (ComfyUI's weights are relative to the empty prompt; diffusers has none);
  SDXL's penultimate hidden state without final norm and the pooled bigG projection are diffusers' defaults too,
  bigG padding with "!" (id 0) as Stability's tokenizer_2; SDXL's size conditioning: CLIPTextEncode's defaults
  (the latent's size, no crop) equal diffusers' defaults, and CLIPTextEncodeSDXL's values are passed as
  original_size / crops_coords_top_left / target_size;
- guidance: ComfyUI mixes denoised outputs, diffusers noise predictions; for eps models x − σ·ε is linear, so the
  two agree to float rounding.
The bounds (1e-5 of the reference's largest value) are float32 rounding with headroom: every case measured 1–3e-6;
each test says what it measured (and the SDXL and LoRA ones what a wrong setting gives).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from executor.runner import Executor
from nodes import build_registry, devices, models, paths
from tests.diffusers_ref import controlnet, pipeline

# 128 px: at 64 px the tiny SD1.5 UNet's deepest level is 1 × 1, where each GroupNorm group holds two values and
# one float32 ulp in the input moved the output by 1e-3 (measured); at 2 × 2 it is as well-conditioned as the rest
SEED, STEPS, CFG, SIZE = 5, 4, 7.0, 128
TIMESTEPS = [999, 666, 333, 0]  # KSampler's euler/normal for 4 steps, integers: see the module docstring
POSITIVE, NEGATIVE = "a red apple on a wooden table", "blurry, low quality"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved, policy = paths.FOLDERS, devices.POLICY
    root = tmp_path_factory.mktemp("diffusers_pipelines")
    paths.configure(root)
    devices.configure("cpu", "fp32")
    yield root
    paths.FOLDERS, devices.POLICY = saved, policy


@pytest.fixture
def ex(base: Path) -> Executor:
    """A fresh executor per test: result.values then holds every node's output (none comes from the cache)."""
    return Executor(build_registry())


def _noise(size: int = SIZE) -> torch.Tensor:
    """What Sumi's KSampler draws for an empty latent of `size` (nodes/diffusion/sample.py prepare_noise)."""
    return torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(SEED))


def _graph(ckpt: str, *, encode: str = "CLIPTextEncode", sdxl_sizes: dict[str, int] | None = None,
           lora: dict[str, Any] | None = None, control: tuple[str, str, float] | None = None) -> dict[str, Any]:
    """txt2img: checkpoint (+ LoRA) → prompts (+ ControlNet: file, hint image, strength) → empty latent → KSampler
    euler/normal → VAEDecode."""
    model, clip = ["1", 0], ["1", 1]
    g: dict[str, Any] = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora is not None:
        g["9"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, **lora}}
        model, clip = ["9", 0], ["9", 1]
    for node, text in (("2", POSITIVE), ("3", NEGATIVE)):
        if encode == "CLIPTextEncodeSDXL":
            g[node] = {"class_type": encode, "inputs": {"clip": clip, "text_g": text, "text_l": text + ", detailed",
                                                        **(sdxl_sizes or {})}}
        else:
            g[node] = {"class_type": encode, "inputs": {"clip": clip, "text": text}}
    cond = [["2", 0], ["3", 0]]
    if control is not None:
        name, hint, strength = control
        g["10"] = {"class_type": "LoadImage", "inputs": {"image": hint}}
        g["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        g["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": cond[0], "negative": cond[1], "control_net": ["11", 0], "image": ["10", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        cond = [["12", 0], ["12", 1]]
    g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    g["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": cond[0], "negative": cond[1], "latent_image": ["4", 0], "seed": SEED,
        "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return g


def _run(ex: Executor, graph: dict[str, Any]) -> Any:
    result = ex.run(graph)
    assert result.status == "success", (result.error or {}).get("traceback")
    return result


def _diffusers(pipe: Any, noise: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents in the model's scaled space, image [B, H, W, 3]) of one diffusers run."""
    last: list[torch.Tensor] = []

    def keep(_pipe: Any, _i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        last[:] = [tensors["latents"].detach().clone()]
        return tensors

    with torch.no_grad():
        image = pipe(height=SIZE, width=SIZE, timesteps=TIMESTEPS, guidance_scale=CFG, latents=noise.clone(),
                     output_type="pt", callback_on_step_end=keep, **kwargs).images
    return last[0], image.movedim(1, -1)


def _assert_close(mine: torch.Tensor, ref: torch.Tensor, rel: float, what: str) -> float:
    """max|mine − ref| ≤ rel · max|ref|; returns the relative difference."""
    assert mine.shape == ref.shape, what
    assert torch.isfinite(mine).all() and float(ref.abs().max()) > 0
    diff = float((mine.float() - ref.float()).abs().max()) / float(ref.abs().max())
    assert diff <= rel, f"{what}: differs from diffusers by {diff:.3g} of max|ref| (bound {rel})"
    return diff


# ------------------------------------------------------------------------------------------------ SDXL txt2img


SDXL_SIZES = {"width": 1024, "height": 768, "crop_w": 16, "crop_h": 8, "target_width": 512, "target_height": 640}


@pytest.mark.parametrize("encode", ["CLIPTextEncode", "CLIPTextEncodeSDXL"])
def test_sdxl_txt2img_matches_stable_diffusion_xl_pipeline(ex: Executor, encode: str) -> None:
    from diffusers import StableDiffusionXLPipeline

    ckpt = models.ensure_default_checkpoint("sumi_tiny_sdxl.safetensors")
    pipe = pipeline(StableDiffusionXLPipeline, ckpt, paths.FOLDERS.base / "cfg_sdxl")
    result = _run(ex, _graph(ckpt.name, encode=encode, sdxl_sizes=SDXL_SIZES))
    if encode == "CLIPTextEncode":  # diffusers' defaults: the image's own size, no crop, prompt_2 = prompt
        kwargs: dict[str, Any] = {"prompt": POSITIVE, "negative_prompt": NEGATIVE}
    else:  # text_g reads bigG (diffusers' prompt_2), text_l CLIP-L (prompt); sizes as (height, width)
        s = SDXL_SIZES
        sizes = {"original_size": (s["height"], s["width"]), "crops_coords_top_left": (s["crop_h"], s["crop_w"]),
                 "target_size": (s["target_height"], s["target_width"])}
        kwargs = {"prompt": POSITIVE + ", detailed", "prompt_2": POSITIVE, "negative_prompt": NEGATIVE + ", detailed",
                  "negative_prompt_2": NEGATIVE, **sizes,
                  **{"negative_" + k: v for k, v in sizes.items()}}
    latents, image = _diffusers(pipe, _noise(), **kwargs)
    mine = result.values["5"][0]["samples"] * 0.13025
    # measured 2–3e-6 (latents and image); swapping crop_w and crop_h alone moves the latents by 1.2e-2
    _assert_close(mine, latents, 1e-5, "latents")
    _assert_close(result.values["6"][0], image, 1e-5, "image")


# ------------------------------------------------------------------------------------------------ ControlNet


def _pattern(path: Path, seed: int) -> Image.Image:
    """A seeded 8-bit RGB image with hard edges (blocks of 8 px), saved as PNG for LoadImage."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    image = Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnet_matches_diffusers_controlnet_pipelines(ex: Executor, family: str) -> None:
    """ControlNetApplyAdvanced on both prompts, strength 0.8 over the whole schedule, against diffusers'
    ControlNet pipelines (non-guess mode: the control on both halves of the CFG batch), controlnet_conditioning_scale
    0.8. The hint is the same 8-bit image; diffusers' control-image processor scales it to 0..1 without
    normalising, as LoadImage gives it. (ComfyUI's start/end percent are sigma windows, diffusers' control_guidance
    start/end step fractions: only the full window means the same on both.)"""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    ckpt = models.ensure_default_checkpoint(f"sumi_tiny_{family}.safetensors")
    cn_path = models.ensure_tiny_controlnet(f"sumi_tiny_{family}_controlnet.safetensors")
    hint = _pattern(paths.FOLDERS.input / "control_hint.png", 3)
    cls = StableDiffusionXLControlNetPipeline if family == "sdxl" else StableDiffusionControlNetPipeline
    pipe = pipeline(cls, ckpt, paths.FOLDERS.base / f"cfg_cn_{family}", controlnet=controlnet(cn_path))
    result = _run(ex, _graph(ckpt.name, control=(cn_path.name, "control_hint.png", 0.8)))
    plain = _run(Executor(build_registry()), _graph(ckpt.name))
    latents, image = _diffusers(pipe, _noise(), prompt=POSITIVE, negative_prompt=NEGATIVE, image=hint,
                                controlnet_conditioning_scale=0.8)
    scale = pipe.vae.config.scaling_factor
    mine = result.values["5"][0]["samples"] * scale
    effect = float((plain.values["5"][0]["samples"] * scale - latents).abs().max() / latents.abs().max())
    assert effect > 1e-3  # the control changes the result far beyond the bound below
    # measured ≤ 2.2e-6 (latents and image)
    _assert_close(mine, latents, 1e-5, "latents")
    _assert_close(result.values["6"][0], image, 1e-5, "image")


# ------------------------------------------------------------------------------------------------ inpainting


def test_inpainting_model_matches_stable_diffusion_inpaint_pipeline(ex: Executor) -> None:
    """The 9-channel tiny SD1.5 inpainting model with InpaintModelConditioning against
    StableDiffusionInpaintPipeline. What is made to agree:
    - the hole (alpha 0 in the PNG: LoadImage's mask 1) is aligned to 8-px blocks, so diffusers' nearest resize of
      the mask to the latent and ComfyUI's bilinear-then-round give the same mask;
    - the masked image: ComfyUI greys masked pixels to 0.5 before encoding, diffusers multiplies the [-1, 1] image by
      (mask < 0.5): both feed the VAE 0 there. ComfyUI encodes the posterior mean, diffusers samples the posterior
      (`retrieve_latents` with its generator): diffusers gets `masked_image_latents` from its own VAE and its own
      preprocessing, with the mean;
    - the start: at strength 1 diffusers starts from noise alone, while KSampler adds its input latent to the noise
      (ComfyUI's noise scaling); InpaintModelConditioning's latent is the encoded image, so the sampler gets an
      empty latent, and noise_mask is off (diffusers' 9-channel path keeps no region fixed)."""
    from diffusers import StableDiffusionInpaintPipeline

    ckpt = models.ensure_default_checkpoint("sumi_tiny_sd15_inpainting.safetensors")
    rgb = _pattern(paths.FOLDERS.input / "inpaint_rgb.png", 4)
    hole = np.zeros((SIZE, SIZE), dtype=np.uint8)
    hole[32:96, 40:112] = 255  # repaint here (diffusers: white; ComfyUI: alpha 0)
    rgba = np.dstack([np.asarray(rgb), 255 - hole])
    Image.fromarray(rgba, "RGBA").save(paths.FOLDERS.input / "inpaint_rgba.png")
    graph = _graph(ckpt.name)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "inpaint_rgba.png"}}
    graph["11"] = {"class_type": "InpaintModelConditioning", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["10", 0], "mask": ["10", 1],
        "noise_mask": False}}
    graph["5"]["inputs"].update(positive=["11", 0], negative=["11", 1])
    result = _run(ex, graph)

    pipe = pipeline(StableDiffusionInpaintPipeline, ckpt, paths.FOLDERS.base / "cfg_inpaint")
    mask_image = Image.fromarray(hole, "L")
    with torch.no_grad():
        init = pipe.image_processor.preprocess(rgb)
        keep = pipe.mask_processor.preprocess(mask_image) < 0.5
        masked = pipe.vae.encode(init * keep).latent_dist.mode() * pipe.vae.config.scaling_factor
    latents, image = _diffusers(pipe, _noise(), prompt=POSITIVE, negative_prompt=NEGATIVE, image=rgb,
                                mask_image=mask_image, masked_image_latents=masked, strength=1.0)
    concat = result.values["11"][0][0][1]["concat_latent_image"] * 0.18215
    _assert_close(concat, masked, 1e-5, "masked-image latent")  # measured 0: bit-identical
    mine = result.values["5"][0]["samples"] * 0.18215
    # measured 2.7e-6 (latents) and 3.0e-6 (image)
    _assert_close(mine, latents, 1e-5, "latents")
    _assert_close(result.values["6"][0], image, 1e-5, "image")


# ------------------------------------------------------------------------------------------------ LoRA


LORAS = [("sd15", "kohya"), ("sd15", "peft"), ("sdxl", "kohya")]


@pytest.mark.parametrize(("family", "fmt"), LORAS, ids=[f"{f}-{m}" for f, m in LORAS])
def test_lora_matches_diffusers_load_lora_weights_and_fuse_lora(ex: Executor, family: str, fmt: str) -> None:
    """LoraLoader (strength_model = strength_clip = 0.7) against `pipe.load_lora_weights(file)` then
    `pipe.fuse_lora(lora_scale=0.7)` on the same tiny LoRA files (kohya with alpha, diffusers/PEFT without). ComfyUI
    holds text-encoder weights at fp16 precision, so a LoRA merged into them is rounded to fp16 (nodes/diffusion/
    lora.py); the diffusers text encoders get the same rounding after fusing (their unpatched weights come from an fp16
    file, so for them it changes nothing)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from nodes.diffusion import fixtures as F

    ckpt = models.ensure_default_checkpoint(f"sumi_tiny_{family}.safetensors")
    name = f"sumi_tiny_{family}_lora_{fmt}.safetensors"
    if name in models.TINY_LORAS:
        lora_path = models.ensure_tiny_lora(name)
    else:
        lora_path = paths.model_dirs("loras")[0] / name
        lora_path.parent.mkdir(parents=True, exist_ok=True)
        F.write_lora_by_rule(lora_path, F.tiny_lora_layout(family, fmt))
    lora = {"lora_name": name, "strength_model": 0.7, "strength_clip": 0.7}
    result = _run(ex, _graph(ckpt.name, lora=lora))
    plain = _run(Executor(build_registry()), _graph(ckpt.name))

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = pipeline(cls, ckpt, paths.FOLDERS.base / f"cfg_lora_{family}_{fmt}")
    pipe.load_lora_weights(str(lora_path.parent), weight_name=lora_path.name)
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()  # the fused weights stay; the adapters go
    texts = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    with torch.no_grad():
        for enc in texts:
            for p in enc.parameters():
                p.copy_(p.half().float())
    latents, image = _diffusers(pipe, _noise(), prompt=POSITIVE, negative_prompt=NEGATIVE)
    scale = pipe.vae.config.scaling_factor
    mine = result.values["5"][0]["samples"] * scale
    effect = float((plain.values["5"][0]["samples"] * scale - latents).abs().max() / latents.abs().max())
    assert effect > 1e-3  # the LoRA changes the result far beyond the bound below
    # measured ≤ 2.6e-6 (latents and image); without the fp16 rounding of the text weights SD1.5's differ by
    # 1.1e-4 (kohya) and 6.9e-5 (PEFT), with lora_scale 0.71 instead of 0.7 by 9e-4, 3e-3 and 1.3e-4 (SDXL)
    _assert_close(mine, latents, 1e-5, "latents")
    _assert_close(result.values["6"][0], image, 1e-5, "image")
