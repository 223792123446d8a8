"""The objects that travel on MODEL, CLIP and VAE sockets, and the checkpoint loading behind them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from executor import hostmem

from . import devices, paths

DEFAULT_CHECKPOINT = "sumi_tiny_sd15.safetensors"


@dataclass
class DiffusionModel:
    """MODEL: a UNet with its noise schedule, in the form `diffusion.sample.ksample` expects."""

    unet: torch.nn.Module
    model_sampling: torch.nn.Module
    latent_scale: float
    device: torch.device
    dtype: torch.dtype

    def apply_unet(self, x_in: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.unet(x_in, timestep, encoder_hidden_states=context, return_dict=False)[0]


@dataclass
class VAEModel:
    """VAE: a KL autoencoder; IMAGE [B,H,W,3] in 0..1 ↔ LATENT samples in unscaled VAE space."""

    vae: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        # Heap reuse speeds a decode up only while its buffers are small: the 64-128 MiB ones of a 512 px image
        # fragment the heap (executor/hostmem.py). The largest is the full-resolution block's activation.
        b, _, h, w = samples.shape
        channels = self.vae.config.block_out_channels
        largest = b * h * w * 4 ** (len(channels) - 1) * channels[0] * self.dtype.itemsize
        with torch.inference_mode(), hostmem.reuse_heap(largest <= hostmem.SMALL_BUFFERS):
            out = self.vae.decode(samples.to(self.device, self.dtype), return_dict=False)[0]
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior mean (no sampling), as ComfyUI encodes."""
        x = pixels[..., :3].movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0
        with torch.inference_mode():
            return self.vae.encode(x, return_dict=False)[0].mode().float()


def ensure_default_checkpoint() -> Path:
    """Build the embedded tiny SD1.x checkpoint into models/checkpoints on first use."""
    from .diffusion.checkpoint import build_tiny_checkpoint

    existing = paths.find_model("checkpoints", DEFAULT_CHECKPOINT)
    if existing:
        return existing
    target = paths.model_dirs("checkpoints")[0] / DEFAULT_CHECKPOINT
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{id(target)}")
    build_tiny_checkpoint(tmp)
    tmp.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


def load(path: Path) -> tuple[DiffusionModel, object, VAEModel]:
    """Load a checkpoint file into MODEL, CLIP and VAE on the configured device and dtypes."""
    from .diffusion.checkpoint import load_checkpoint

    policy = devices.POLICY
    # first: it reads the file on a background thread while diffusers and transformers are imported
    ckpt = load_checkpoint(path, device=policy.device, dtype=policy.unet_dtype())
    from .diffusion.clip_encode import ClipTextEncoder
    from .diffusion.model_sampling import ModelSamplingDiscrete
    from .diffusion.tokenizer import load_clip_tokenizer

    s = ckpt.schedule
    sampling = ModelSamplingDiscrete(s["beta_start"], s["beta_end"], s["beta_schedule"],
                                     s["num_train_timesteps"]).to(policy.device)
    model = DiffusionModel(ckpt.unet, sampling, ckpt.latent_scale, policy.device, policy.unet_dtype())
    clip = ClipTextEncoder(_as_dtype(ckpt.text_encoder, policy.text_dtype()), load_clip_tokenizer())
    vae = VAEModel(_as_dtype(ckpt.vae, policy.vae_dtype()), policy.device, policy.vae_dtype())
    return model, clip, vae


def _as_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # Only cast when needed: diffusers warns on every .to(dtype), even a no-op one.
    return module if next(module.parameters()).dtype == dtype else module.to(dtype=dtype)
