"""TAESD (madebyollin's Tiny AutoEncoder for Stable Diffusion) as a VAE: the original encoder/decoder files
(`taesd_encoder.*` / `taesd_decoder.*`, each the state dict of a plain `nn.Sequential`) loaded into diffusers'
`AutoencoderTiny`.

diffusers ships no converter for these files, so the names are mapped by one table row per half: the Sequential's
index `i` is `encoder.layers.i`, and `decoder.layers.(i - 1)` on the decoder side, whose index 0 is the clamp
(tanh(x/3)·3) that diffusers applies in `DecoderTiny.forward` instead of as a layer. The config (widths, blocks per
stage, latent channels) comes from the files' shapes. TAESD works on the sampler's scaled latents; ComfyUI gives each
name its family's scale and shift (`TAESD_NAMES`), so LATENT stays in unscaled VAE space as with a KL VAE.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .reading import CheckpointError, read_state_dict

# pseudo-name -> (family it decodes, latent scale, latent shift, latent channels), as ComfyUI's VAELoader sets them
TAESD_NAMES: dict[str, tuple[str, float, float, int]] = {
    "taesd": ("SD1.x / SD2.x", 0.18215, 0.0, 4), "taesdxl": ("SDXL", 0.13025, 0.0, 4),
    "taesd3": ("SD3", 1.5305, 0.0609, 16), "taef1": ("Flux", 0.3611, 0.1159, 16)}
RUNNABLE = ("taesd", "taesdxl")
# one row per half: (diffusers module, index offset of the original Sequential)
HALVES = {"encoder": ("encoder.layers", 0), "decoder": ("decoder.layers", 1)}
_ENTRY = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class TaesdHalf:
    """What a TAESD half's file holds: its widths and blocks per stage, and its latent channels."""

    part: str  # encoder | decoder
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    latent_channels: int


def _entries(sd: Mapping[str, torch.Tensor]) -> dict[int, str]:
    """Index -> conv / block of the Sequential (indices without parameters: ReLU, Upsample, the clamp)."""
    out: dict[int, str] = {}
    for k in sd:
        m = _ENTRY.match(k)
        if m is None:
            raise CheckpointError("not a TAESD half: names are not those of an nn.Sequential",
                                  detected=f"{len(sd)} tensors, e.g. {sorted(sd)[:3]}")
        out[int(m.group(1))] = "block" if m.group(2).startswith("conv.") else out.get(int(m.group(1)), "conv")
    return out


def detect_taesd(sd: Mapping[str, torch.Tensor], part: str) -> TaesdHalf:
    """The shape of one TAESD half (`part` encoder or decoder) from its file's names and shapes."""
    if not sd:
        raise CheckpointError("the file holds no tensors")
    entries = _entries(sd)
    order = sorted(entries)
    convs = [i for i in order if entries[i] == "conv"]
    if len(convs) < 2 or f"{convs[0]}.weight" not in sd or sd[f"{convs[0]}.weight"].ndim != 4:
        raise CheckpointError(f"not a TAESD {part}: no convolutions at its ends",
                              detected=f"{len(sd)} tensors, e.g. {sorted(sd)[:3]}")
    first, last = sd[f"{convs[0]}.weight"], sd[f"{convs[-1]}.weight"]
    if part == "encoder":
        if first.shape[1] != 3:
            raise CheckpointError(f"not a TAESD encoder: its first convolution takes {first.shape[1]} channels, "
                                  "not RGB", detected=f"first conv {list(first.shape)}")
        latent = last.shape[0]  # a stage starts at each conv; the last conv is the output
    else:
        if last.shape[0] != 3:
            raise CheckpointError(f"not a TAESD decoder: its last convolution gives {last.shape[0]} channels, "
                                  "not RGB", detected=f"last conv {list(last.shape)}")
        latent = first.shape[1]  # after the input conv, each conv closes a stage
    stages = [[i for i in order if a < i < b and entries[i] == "block"] for a, b in itertools.pairwise(convs)]
    if part == "encoder":
        widths = [sd[f"{c}.weight"].shape[0] for c in convs[:-1]]
    else:
        widths = [sd[f"{s[0]}.conv.0.weight"].shape[0] if s else 0 for s in stages]
    if not all(stages) or len(widths) != len(stages):
        raise CheckpointError(f"not a TAESD {part}: a stage without blocks", detected=str(entries))
    return TaesdHalf(part, tuple(widths), tuple(len(s) for s in stages), latent)


def taesd_config(encoder: TaesdHalf, decoder: TaesdHalf) -> dict[str, Any]:
    """AutoencoderTiny's config for the two halves."""
    if encoder.latent_channels != decoder.latent_channels:
        raise CheckpointError(f"TAESD halves of different latents: the encoder gives {encoder.latent_channels} "
                              f"channels, the decoder takes {decoder.latent_channels}")
    return {"in_channels": 3, "out_channels": 3, "latent_channels": encoder.latent_channels,
            "encoder_block_out_channels": list(encoder.widths), "num_encoder_blocks": list(encoder.blocks),
            "decoder_block_out_channels": list(decoder.widths), "num_decoder_blocks": list(decoder.blocks),
            "act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2}


def to_diffusers(sd: Mapping[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """One half's original names as AutoencoderTiny's (`HALVES`)."""
    module, offset = HALVES[part]
    out = {}
    for k, t in sd.items():
        index, rest = k.split(".", 1)
        out[f"{module}.{int(index) - offset}.{rest}"] = t
    return out


def to_original(sd: Mapping[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The inverse of `to_diffusers`, for one half of an AutoencoderTiny state dict (writing files)."""
    module, offset = HALVES[part]
    out = {}
    for k, t in sd.items():
        if k.startswith(module + "."):
            index, rest = k[len(module) + 1:].split(".", 1)
            out[f"{int(index) + offset}.{rest}"] = t
    return out


def load_taesd(encoder: Path, decoder: Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """AutoencoderTiny from the two original files (read whole: each is about 1.2 M parameters)."""
    from diffusers import AutoencoderTiny

    halves = {}
    for part, path in (("encoder", encoder), ("decoder", decoder)):
        sd = read_state_dict(path)
        try:
            halves[part] = (detect_taesd(sd, part), sd)
        except CheckpointError as e:
            e.path = str(path)
            raise
    config = taesd_config(halves["encoder"][0], halves["decoder"][0])
    with torch.device("meta"):
        module = AutoencoderTiny.from_config(config)
    state = {k: t.to(device=device, dtype=dtype if t.is_floating_point() else None)
             for part, (_, sd) in halves.items() for k, t in to_diffusers(sd, part).items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"layout detected as a TAESD but the tensors do not fit: {e}", reason="mismatch",
                              path=decoder) from e
    return module.eval().requires_grad_(False)


@dataclass
class TinyVAEModel:
    """VAE: TAESD; IMAGE [B,H,W,3] in 0..1 <-> LATENT samples in unscaled VAE space (scale/shift per family)."""

    vae: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    scale: float
    shift: float = 0.0

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        x = (samples.to(self.device, self.dtype) - self.shift) * self.scale
        with torch.inference_mode():
            out = self.vae.decode(x, return_dict=False)[0]  # diffusers gives [-1, 1]
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels[..., :3].movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0
        with torch.inference_mode():
            latents = self.vae.encode(x, return_dict=False)[0]
        return latents.float() / self.scale + self.shift
