"""The objects that travel on MODEL, CLIP and VAE sockets, and the checkpoint loading behind them."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import hostmem

from . import devices, paths
from .diffusion.patches import WeightPatch
from .diffusion.patches import patched as patch_weights

if TYPE_CHECKING:
    from .diffusion.clip_encode import TextEncoders

DEFAULT_CHECKPOINT = "sumi_tiny_sd15.safetensors"
# the embedded tiny checkpoints, one per family, built on first use (nodes/diffusion/fixtures.py)
TINY_CHECKPOINTS = {DEFAULT_CHECKPOINT: "sd15", "sumi_tiny_sd2.safetensors": "sd2",
                    "sumi_tiny_sdxl.safetensors": "sdxl", "sumi_tiny_sdxl_refiner.safetensors": "sdxl_refiner",
                    "sumi_tiny_sd15_inpainting.safetensors": "sd15"}
TINY_INPAINTING = {"sumi_tiny_sd15_inpainting.safetensors"}  # 9-channel UNets


@dataclass(frozen=True)
class DiffusionModel:
    """MODEL: a denoising network (shared weights), its family, noise schedule and patches.

    A view, never edited in place: nodes that change a model (ModelSamplingDiscrete, LoRA) return `clone(...)`,
    which shares `unet` with the cached original. Weight patches are applied by `patched()` for the length of a
    sampler run and the original weights restored after, so a cached model is never left patched.

    Per family (`family`), `model_inputs` builds what one conditioning entry feeds the network besides x and t:
    the cross-attention context, and for SDXL the pooled output and size values (the ADM vector). A DiT family
    (SD3's MMDiT, Flux) plugs in here as one more family: its own `model_inputs` (context, pooled projection) and
    its diffusers transformer in `apply_model`.
    """

    unet: torch.nn.Module
    model_sampling: torch.nn.Module
    latent_scale: float
    device: torch.device
    dtype: torch.dtype
    family: str = "sd15"
    patches: tuple[WeightPatch, ...] = ()

    def clone(self, **changes: Any) -> DiffusionModel:
        return dataclasses.replace(self, **changes)

    @property
    def concat_channels(self) -> int:
        """Extra input channels beyond the latent's (inpainting UNets: mask + masked-image latent = 5)."""
        return int(getattr(getattr(self.unet, "config", None), "in_channels", 4)) - 4

    def model_inputs(self, cond: torch.Tensor, extras: Mapping[str, Any], noise_shape: Sequence[int],
                     prompt_type: str, latent_image: torch.Tensor | None = None,
                     denoise_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        width = getattr(getattr(self.unet, "config", None), "cross_attention_dim", None)
        if width is not None and cond.shape[-1] != width:
            raise ValueError(f"conditioning {cond.shape[-1]} wide does not fit this {self.family} model (its context "
                             f"is {width} wide): were the prompts encoded with another model's text encoder?")
        inputs = {"context": cond}
        if self.family in ("sdxl", "sdxl_refiner"):
            pooled = extras.get("pooled_output")
            want = self.unet.config.projection_class_embeddings_input_dim - self.unet.config.addition_time_embed_dim \
                * (5 if self.family == "sdxl_refiner" else 6)
            if pooled is None or pooled.shape[-1] != want:
                raise ValueError(f"this {self.family} model needs a pooled text output {want} wide; the conditioning "
                                 f"has {'none' if pooled is None else pooled.shape[-1]}")
            inputs["text_embeds"] = pooled
            inputs["time_ids"] = sdxl_time_ids(self.family, extras, noise_shape, prompt_type)
        if self.concat_channels:
            inputs["concat"] = inpaint_concat(extras, noise_shape, self.latent_scale, latent_image, denoise_mask)
        return inputs

    def apply_model(self, x_in: torch.Tensor, timestep: torch.Tensor, inputs: Mapping[str, torch.Tensor],
                    control: Any = None, sigma: float | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if "text_embeds" in inputs:  # diffusers embeds the time ids (256-wide sinusoids) and adds them as ADM
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        if control is not None:
            res = control.residuals(x_in, timestep, inputs, sigma, self.model_sampling)
            if res is not None:
                kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = res
        if "concat" in inputs:  # inpainting UNets read [x, mask, masked-image latent]
            x_in = torch.cat([x_in, inputs["concat"].to(x_in)], dim=1)
        with torch.inference_mode():
            return self.unet(x_in, timestep, encoder_hidden_states=inputs["context"], return_dict=False,
                             **kwargs)[0]

    @contextlib.contextmanager
    def patched(self) -> Iterator[DiffusionModel]:
        """The UNet with this view's weight patches applied in place, restored bit-exactly on leaving."""
        with patch_weights(self.unet, self.patches):
            yield self


# "zero" in pixel space, encoded: the masked-image input of an inpainting UNet when nothing is masked
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def inpaint_concat(extras: Mapping[str, Any], noise_shape: Sequence[int], latent_scale: float,
                   latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> torch.Tensor:
    """The 5 extra channels of an inpainting UNet, [B, 1 + 4, h, w], as ComfyUI forms them: the mask (the entry's
    `concat_mask`, else the LATENT's noise mask; bilinear to the latent, rounded) and the masked-image latent (the
    entry's `concat_latent_image` × the latent scale, else the sampled latent itself). Without a mask: ones and
    the encoding of a black image."""
    b, _, h, w = (int(s) for s in noise_shape)
    mask = extras.get("concat_mask", denoise_mask)
    image = extras.get("concat_latent_image")
    if image is not None:
        image = image.float() * latent_scale
    else:
        image = latent_image
    if mask is None:
        ones = torch.ones((b, 1, h, w))
        blank = torch.ones((b, 4, h, w)) * torch.tensor(BLANK_INPAINT_LATENT).view(1, 4, 1, 1)
        return torch.cat([ones, blank], dim=1)
    mask = mask.float()
    if mask.ndim == 4:
        mask = mask[:, :1]
    mask = mask.reshape((-1, 1, *mask.shape[-2:]))
    if tuple(mask.shape[-2:]) != (h, w):
        mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear")
    mask = _to_batch(mask.round(), b)
    image = image.float()
    if tuple(image.shape[-2:]) != (h, w):
        image = torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear")
    return torch.cat([mask.to(image.device), _to_batch(image, b)], dim=1)


def _to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    return t.repeat(-(-batch // t.shape[0]), *([1] * (t.ndim - 1)))[:batch]


def sdxl_time_ids(family: str, extras: Mapping[str, Any], noise_shape: Sequence[int], prompt_type: str) \
        -> torch.Tensor:
    """SDXL's size conditioning [1, 6] (height, width, crop_h, crop_w, target_height, target_width) or the
    refiner's [1, 5] (height, width, crop_h, crop_w, aesthetic score). Sizes default to the latent's × 8 and the
    score to 6 (positive) / 2.5 (negative), as in ComfyUI."""
    width = extras.get("width", noise_shape[3] * 8)
    height = extras.get("height", noise_shape[2] * 8)
    crop_w, crop_h = extras.get("crop_w", 0), extras.get("crop_h", 0)
    if family == "sdxl_refiner":
        score = extras.get("aesthetic_score", 2.5 if prompt_type == "negative" else 6.0)
        values = [height, width, crop_h, crop_w, score]
    else:
        values = [height, width, crop_h, crop_w, extras.get("target_height", height),
                  extras.get("target_width", width)]
    return torch.tensor([[float(v) for v in values]], dtype=torch.float32)


@dataclass
class VAEModel:
    """VAE: a KL autoencoder; IMAGE [B,H,W,3] in 0..1 ↔ LATENT samples in unscaled VAE space."""

    vae: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        _lean_activations(self.vae)
        # Heap reuse (hostmem.py) over a whole decode fragments the heap with its 64-128 MiB buffers of
        # different sizes; handing the free heap back after each decoder stage keeps the reuse within a stage,
        # where the sizes repeat (512 px: 14 s instead of 16.5 s, peak +0.35 GiB).
        decoder = self.vae.decoder
        for stage in (decoder.mid_block, *decoder.up_blocks):
            stage.register_forward_hook(_settle_heap)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), hostmem.reuse_heap():
            out = self.vae.decode(samples.to(self.device, self.dtype), return_dict=False)[0]
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior mean (no sampling), as ComfyUI encodes."""
        x = pixels[..., :3].movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0
        with torch.inference_mode():
            return self.vae.encode(x, return_dict=False)[0].mode().float()


def ensure_default_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Build one of the embedded tiny checkpoints (`TINY_CHECKPOINTS`) into models/checkpoints on first use."""
    from .diffusion.fixtures import build_tiny_checkpoint

    return paths.build_once("checkpoints", name, lambda tmp: build_tiny_checkpoint(
        tmp, family=TINY_CHECKPOINTS[name], in_channels=9 if name in TINY_INPAINTING else 4))


# the embedded tiny LoRAs for the tiny SD1.x model, one per file format, built on first use
TINY_LORAS = {"sumi_tiny_sd15_lora_kohya.safetensors": ("sd15", "kohya"),
              "sumi_tiny_sd15_lora_peft.safetensors": ("sd15", "peft")}


TINY_CONTROLNETS = {"sumi_tiny_sd15_controlnet.safetensors": "sd15",
                    "sumi_tiny_sdxl_controlnet.safetensors": "sdxl"}


def ensure_tiny_controlnet(name: str) -> Path:
    """Build one of `TINY_CONTROLNETS` into models/controlnet on first use."""
    from .diffusion.fixtures import build_tiny_controlnet

    return paths.build_once("controlnet", name, lambda tmp: build_tiny_controlnet(tmp, TINY_CONTROLNETS[name]))


# the embedded tiny TAESDs (VAELoader pseudo-names, as ComfyUI's `taesd`) -> the ComfyUI name whose scale they use
TINY_TAESD = {"sumi_tiny_taesd": "taesd", "sumi_tiny_taesdxl": "taesdxl"}


def taesd_files(name: str) -> tuple[Path, Path] | None:
    """(encoder, decoder) files of a TAESD pseudo-name in models/vae_approx (`NAME_encoder.*`, `NAME_decoder.*`,
    as ComfyUI's VAELoader finds them), or None when a half is missing."""
    encoder, decoder = taesd_file(name, "encoder"), taesd_file(name, "decoder")
    return None if encoder is None or decoder is None else (encoder, decoder)


def taesd_file(name: str, part: str) -> Path | None:
    """One half (`encoder` / `decoder`) of a TAESD in models/vae_approx: `NAME_part.*`, or None."""
    rel = next((n for n in paths.list_models("vae_approx") if n.startswith(f"{name}_{part}.")), None)
    return paths.find_model("vae_approx", rel) if rel else None


def ensure_tiny_taesd(name: str) -> tuple[Path, Path]:
    """Build one of `TINY_TAESD` (both halves) into models/vae_approx on first use."""
    from .diffusion.fixtures import taesd_layout, tensor_seed, write_by_rule

    seed = tensor_seed(name) % 1000  # the halves get different seeds: their tensor names coincide
    encoder, decoder = (paths.build_once("vae_approx", f"{name}_{part}.safetensors",
                                         lambda tmp, part=part, s=seed + i: write_by_rule(tmp, taesd_layout(part), s,
                                                                                          buffers=False))
                        for i, part in enumerate(("encoder", "decoder")))
    return encoder, decoder


def load_taesd(name: str) -> Any:
    """VAELoader's `taesd` / `taesdxl` (or a tiny one): TAESD as VAE, with its family's latent scale."""
    from .diffusion.reading import CheckpointError
    from .diffusion.taesd import RUNNABLE, TAESD_NAMES, TinyVAEModel
    from .diffusion.taesd import load_taesd as load_module

    real = TINY_TAESD.get(name, name)
    family, scale, shift, _ = TAESD_NAMES[real]
    if real not in RUNNABLE:
        raise CheckpointError(f"{name} decodes {family} latents, a model family Sumi does not run")
    files = ensure_tiny_taesd(name) if name in TINY_TAESD else taesd_files(name)
    if files is None:
        raise FileNotFoundError(paths.missing_model_hint("vae_approx")(f"{name}_encoder.* / {name}_decoder.*"))
    policy = devices.POLICY
    return TinyVAEModel(load_module(*files, device=policy.device, dtype=policy.vae_dtype()), policy.device,
                        policy.vae_dtype(), scale, shift)


# the embedded tiny split files (UNETLoader, CLIPLoader / DualCLIPLoader, VAELoader): each one component of a tiny
# checkpoint, laid out as the model repositories ship them (fixtures.write_split_files) -> (folder, checkpoint, part)
SPLIT_FOLDERS = {"unet": "diffusion_models", "vae": "vae", "clip_l": "text_encoders", "clip_g": "text_encoders"}
TINY_SPLIT = {f"{stem}_{part}.safetensors": (SPLIT_FOLDERS[part], f"{stem}.safetensors", part)
              for stem, parts in (("sumi_tiny_sd15", ("unet", "clip_l", "vae")),
                                  ("sumi_tiny_sdxl", ("unet", "clip_l", "clip_g", "vae")))
              for part in parts}


def ensure_tiny_split(name: str) -> Path:
    """Build one of `TINY_SPLIT` into its model folder on first use (from its tiny checkpoint, built if need be)."""
    import os
    import tempfile

    from .diffusion.fixtures import write_split_files

    folder, checkpoint, part = TINY_SPLIT[name]

    def write(tmp: Path) -> None:
        # a hidden scratch folder: model listings skip dot-folders, so no half-split file is ever offered
        with tempfile.TemporaryDirectory(prefix=".sumi-split-", dir=tmp.parent) as scratch:
            os.replace(write_split_files(ensure_default_checkpoint(checkpoint), scratch)[part], tmp)

    return paths.build_once(folder, name, write)


# the embedded tiny upscaler: an ESRGAN ×4 in RealESRGAN_x4plus's layout, a few blocks wide
TINY_UPSCALE_MODELS = {"sumi_tiny_esrgan_x4.pth": "tiny"}


def ensure_tiny_upscale_model(name: str) -> Path:
    """Build one of `TINY_UPSCALE_MODELS` into models/upscale_models on first use."""
    from .upscaler_fixtures import TINY, write_esrgan

    return paths.build_once("upscale_models", name, lambda tmp: write_esrgan(tmp, **TINY))


def tiny_files(kind: str) -> dict[str, Callable[[str], Path]]:
    """The embedded tiny files a loader of model folder `kind` offers besides the folder's own: name -> its
    builder (`builder(name)` writes it on first use and returns its path)."""
    own = {"checkpoints": dict.fromkeys(TINY_CHECKPOINTS, ensure_default_checkpoint),
           "loras": dict.fromkeys(TINY_LORAS, ensure_tiny_lora),
           "controlnet": dict.fromkeys(TINY_CONTROLNETS, ensure_tiny_controlnet),
           "upscale_models": dict.fromkeys(TINY_UPSCALE_MODELS, ensure_tiny_upscale_model)}.get(kind, {})
    return {**own, **{name: ensure_tiny_split for name, (folder, _, _) in TINY_SPLIT.items() if folder == kind}}


# the embedded tiny textual-inversion embeddings (`embedding:NAME`): NAME -> the tiny family whose encoders they fit
TINY_EMBEDDINGS = {"sumi_tiny_sd15_embedding": "sd15", "sumi_tiny_sdxl_embedding": "sdxl"}


def ensure_tiny_embedding(name: str) -> Path:
    """Build one of `TINY_EMBEDDINGS` into models/embeddings on first use: A1111's `emb_params` file for SD1.x,
    an SDXL file with `clip_l` and `clip_g` vectors, each 2 vectors wide, seeded from the name."""
    from .diffusion.fixtures import write_tiny_embedding

    return paths.build_once("embeddings", f"{name}.safetensors",
                            lambda tmp: write_tiny_embedding(tmp, TINY_EMBEDDINGS[name], name))


def ensure_tiny_lora(name: str) -> Path:
    """Build one of `TINY_LORAS` into models/loras on first use (the reference rule, seeded from the names)."""
    from .diffusion.fixtures import tiny_lora_layout, write_lora_by_rule

    return paths.build_once("loras", name, lambda tmp: write_lora_by_rule(tmp, tiny_lora_layout(*TINY_LORAS[name])))


def load(path: Path) -> tuple[DiffusionModel, TextEncoders, VAEModel]:
    """Load a checkpoint file into MODEL, CLIP and VAE on the configured device and dtypes."""
    from .diffusion.checkpoint import load_checkpoint

    policy = devices.POLICY
    # first: it reads the file on a background thread while diffusers and transformers are imported
    ckpt = load_checkpoint(path, device=policy.device, dtype=policy.unet_dtype())
    from .diffusion.clip_encode import RULES, ClipTextEncoder, TextEncoders
    from .diffusion.model_sampling import ModelSamplingDiscrete
    from .diffusion.tokenizer import load_clip_tokenizer

    sampling = ModelSamplingDiscrete.from_schedule(ckpt.schedule).to(policy.device)
    model = DiffusionModel(ckpt.unet, sampling, ckpt.latent_scale, policy.device, policy.unet_dtype(), ckpt.family)
    tokenizer = load_clip_tokenizer()
    clip = TextEncoders(ckpt.family, {
        name: ClipTextEncoder(_as_dtype(enc, policy.text_dtype()), tokenizer, rules=RULES[(ckpt.family, name)],
                              embeddings=embedding_lookup(name, enc.config.hidden_size))
        for name, enc in ckpt.text_encoders.items()})
    vae = VAEModel(_as_dtype(ckpt.vae, policy.vae_dtype()), policy.device, policy.vae_dtype())
    return model, clip, vae


def load_diffusion_model(path: Path, storage: torch.dtype | None = None) -> DiffusionModel:
    """UNETLoader: a diffusion-model-only file as MODEL (family from the UNet's shapes). `storage` (fp8) rounds
    every weight to that dtype; they are held upcast to the compute dtype, so the numbers are those of fp8 weights
    cast per layer (ComfyUI's manual cast) while the memory is the compute dtype's."""
    from .diffusion.checkpoint import load_diffusion_model as load_unet
    from .diffusion.model_sampling import ModelSamplingDiscrete

    policy = devices.POLICY
    info, unet = load_unet(path, device=policy.device, dtype=policy.unet_dtype(), storage=storage)
    sampling = ModelSamplingDiscrete.from_schedule(info.schedule).to(policy.device)
    return DiffusionModel(unet, sampling, info.latent_scale, policy.device, policy.unet_dtype(), info.family)


# CLIPLoader / DualCLIPLoader types Sumi loads: type -> {encoder set: family}
CLIP_TYPES = {"stable_diffusion": {("clip_l",): "sd15", ("clip_h",): "sd2"},
              "sdxl": {("clip_l", "clip_g"): "sdxl"}}


def load_text_encoders(files: Sequence[Path], clip_type: str) -> TextEncoders:
    """CLIPLoader / DualCLIPLoader: text-encoder files as CLIP, for a `clip_type` of `CLIP_TYPES`."""
    from .diffusion.checkpoint import load_text_encoder
    from .diffusion.clip_encode import RULES, ClipTextEncoder, TextEncoders
    from .diffusion.reading import CheckpointError
    from .diffusion.tokenizer import load_clip_tokenizer

    policy = devices.POLICY
    loaded = dict(load_text_encoder(f, device=policy.device, dtype=policy.text_dtype()) for f in files)
    if "openclip" in loaded:  # an OpenCLIP tower of no standard width: H for SD2, bigG for SDXL
        loaded["clip_h" if clip_type == "stable_diffusion" else "clip_g"] = loaded.pop("openclip")
    order = tuple(n for n in ("clip_l", "clip_h", "clip_g") if n in loaded)
    family = CLIP_TYPES.get(clip_type, {}).get(order)
    if family is None or len(loaded) != len(files):
        raise CheckpointError(f"text encoders {', '.join(order)} do not make a {clip_type!r} CLIP",
                              detected=", ".join(f"{f.name}: {n}" for f, n in zip(files, loaded, strict=False)),
                              hint="stable_diffusion takes one CLIP-L (SD1.x) or OpenCLIP-H (SD2.x) file; "
                                   "sdxl takes CLIP-L and OpenCLIP-bigG")
    tokenizer = load_clip_tokenizer()
    return TextEncoders(family, {
        n: ClipTextEncoder(loaded[n], tokenizer, rules=RULES[(family, n)],
                           embeddings=embedding_lookup(n, loaded[n].config.hidden_size)) for n in order})


def load_vae(path: Path) -> VAEModel:
    """VAELoader: a VAE file as VAE."""
    from .diffusion.checkpoint import load_vae as load_vae_module

    policy = devices.POLICY
    return VAEModel(load_vae_module(path, device=policy.device, dtype=policy.vae_dtype()), policy.device,
                    policy.vae_dtype())


def find_embedding(name: str) -> Path | None:
    """An `embedding:name` file in the embeddings folders: the name as given, or with .safetensors/.pt/.bin
    (subfolders allowed; nothing outside the folders)."""
    from .diffusion.embeddings import SUFFIXES

    for candidate in (name, *(name + s for s in SUFFIXES)):
        path = paths.find_model("embeddings", candidate)
        if path is not None:
            return path
    return ensure_tiny_embedding(name) if name in TINY_EMBEDDINGS else None


def embedding_lookup(encoder: str, width: int) -> Callable[[str], torch.Tensor | None]:
    """name -> the vectors encoder `encoder` (clip_l, clip_g, clip_h) of width `width` takes, or None."""
    from .diffusion.embeddings import pick, read_embedding

    def lookup(name: str) -> torch.Tensor | None:
        path = find_embedding(name)
        return None if path is None else pick(read_embedding(path), encoder, width)

    return lookup


def _settle_heap(*_: object) -> None:  # a forward hook: returning None keeps the stage's output
    hostmem.settle()


def _lean_activations(vae: torch.nn.Module) -> None:
    """Apply the VAE's SiLUs in place. Each one follows a GroupNorm whose fresh output nothing else reads (the
    VAE's resnets have no time embedding, the only other input of their activation), so results are
    bit-identical; a 512 px decode allocates a third fewer full-size buffers and ran 16 % faster."""
    from diffusers.models.resnet import ResnetBlock2D

    for module in vae.modules():
        if isinstance(module, ResnetBlock2D) and module.time_emb_proj is None \
                and isinstance(module.nonlinearity, torch.nn.SiLU):
            module.nonlinearity.inplace = True
    for coder in (vae.encoder, vae.decoder):
        if isinstance(coder.conv_act, torch.nn.SiLU):
            coder.conv_act.inplace = True


def _as_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # Only cast when needed: diffusers warns on every .to(dtype), even a no-op one.
    return module if next(module.parameters()).dtype == dtype else module.to(dtype=dtype)
