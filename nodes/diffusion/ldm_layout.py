"""Tensor names of SD1.x single-file checkpoints (the original LDM layout) and diffusers/transformers modules.

One rule per component maps a diffusers `UNet2DConditionModel` / `AutoencoderKL` key or a transformers
`CLIPTextModel` key to its LDM name; the inverse is that rule applied to a module's own keys and turned
around, so both directions always agree. The rules are generic over block counts and channels: the
index arithmetic reads `layers_per_block`, the number of blocks and which up blocks have attention from
the diffusers config. Written from the public layout of SD1.x files (see tests/parity/reference/sd15_layout.json).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
POSITION_IDS = TEXT_PREFIX + "embeddings.position_ids"

COMPONENTS = ("unet", "vae", "text_encoder")

# diffusers ResnetBlock2D parameter -> LDM ResBlock parameter (UNet)
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
# diffusers VAE attention -> LDM AttnBlock (1x1 convs in LDM, Linear in diffusers)
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTN_MATRIX = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")

_P = r"(weight|bias)$"
_RES = re.compile(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\." + _P)
_ATT = re.compile(r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_SAMPLE = re.compile(r"^(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\." + _P)
_MID_RES = re.compile(r"^mid_block\.resnets\.(\d+)\.(\w+)\." + _P)
_MID_ATT = re.compile(r"^mid_block\.attentions\.0\.(.+)$")
_FIXED = re.compile(r"^(.+)\." + _P)

_VRES = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\." + _P)
_VSAMPLE = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\." + _P)
_VMID_RES = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\." + _P)
_VMID_ATT = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\." + _P)
_VEDGE = re.compile(r"^(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\." + _P)


def _layers(config: Mapping[str, Any]) -> int:
    n = config["layers_per_block"]
    if not isinstance(n, int):
        raise TypeError(f"per-block layers_per_block {n!r} has no SD1.x LDM layout")
    return n


def unet_key(key: str, config: Mapping[str, Any]) -> str:
    """LDM name of one diffusers UNet2DConditionModel state-dict key."""
    per_level = _layers(config) + 1  # LDM: n resblocks then a down/upsampler per level (up blocks have n+1)
    if m := _RES.match(key):
        side, i, j, part, p = m.groups()
        i, j = int(i), int(j)
        where = f"input_blocks.{1 + i * per_level + j}" if side == "down" else f"output_blocks.{i * per_level + j}"
        return f"{UNET_PREFIX}{where}.0.{_UNET_RESNET[part]}.{p}"
    if m := _ATT.match(key):
        side, i, j, rest = m.groups()
        i, j = int(i), int(j)
        where = f"input_blocks.{1 + i * per_level + j}" if side == "down" else f"output_blocks.{i * per_level + j}"
        return f"{UNET_PREFIX}{where}.1.{rest}"
    if m := _SAMPLE.match(key):
        side, i, _, p = m.groups()
        i = int(i)
        if side == "down":
            return f"{UNET_PREFIX}input_blocks.{(i + 1) * per_level}.0.op.{p}"
        has_attn = config["up_block_types"][i].startswith("CrossAttn")
        return f"{UNET_PREFIX}output_blocks.{i * per_level + per_level - 1}.{2 if has_attn else 1}.conv.{p}"
    if m := _MID_RES.match(key):
        j, part, p = m.groups()
        return f"{UNET_PREFIX}middle_block.{2 * int(j)}.{_UNET_RESNET[part]}.{p}"
    if m := _MID_ATT.match(key):
        return f"{UNET_PREFIX}middle_block.1.{m.group(1)}"
    if (m := _FIXED.match(key)) and m.group(1) in _UNET_FIXED:
        return f"{UNET_PREFIX}{_UNET_FIXED[m.group(1)]}.{m.group(2)}"
    raise KeyError(f"no SD1.x LDM name for UNet key {key!r}")


def vae_key(key: str, config: Mapping[str, Any]) -> str:
    """LDM name of one diffusers AutoencoderKL state-dict key (decoder up blocks run in reverse order)."""
    levels = len(config["block_out_channels"])
    if m := _VRES.match(key):
        coder, side, i, j, part, p = m.groups()
        level = int(i) if side == "down" else levels - 1 - int(i)
        part = "nin_shortcut" if part == "conv_shortcut" else part
        return f"{VAE_PREFIX}{coder}.{side}.{level}.block.{j}.{part}.{p}"
    if m := _VSAMPLE.match(key):
        coder, side, i, kind, p = m.groups()
        level = int(i) if side == "down" else levels - 1 - int(i)
        return f"{VAE_PREFIX}{coder}.{side}.{level}.{kind}sample.conv.{p}"
    if m := _VMID_RES.match(key):
        coder, j, part, p = m.groups()
        return f"{VAE_PREFIX}{coder}.mid.block_{int(j) + 1}.{part}.{p}"
    if m := _VMID_ATT.match(key):
        coder, part, p = m.groups()
        return f"{VAE_PREFIX}{coder}.mid.attn_1.{_VAE_ATTN[part]}.{p}"
    if m := _VEDGE.match(key):
        coder, part, p = m.groups()
        return f"{VAE_PREFIX}{coder}.{'norm_out' if part == 'conv_norm_out' else part}.{p}"
    if (m := _FIXED.match(key)) and m.group(1) in ("quant_conv", "post_quant_conv"):
        return VAE_PREFIX + key
    raise KeyError(f"no SD1.x LDM name for VAE key {key!r}")


def text_key(key: str) -> str:
    """LDM name of one CLIPTextModel key (transformers 5 drops the `text_model.` level; 4 keeps it)."""
    return TEXT_PREFIX + key.removeprefix("text_model.")


def is_vae_attention_matrix(ldm_name: str) -> bool:
    """True for VAE attention q/k/v/proj_out weights: [C, C, 1, 1] convs in LDM files, [C, C] in diffusers."""
    return ldm_name.startswith(VAE_PREFIX) and bool(_VAE_ATTN_MATRIX.search(ldm_name))


def ldm_names(unet_keys: Iterable[str], vae_keys: Iterable[str], text_keys: Iterable[str],
              unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{LDM name: (component, module key)} for every key of the three modules; position_ids excluded."""
    out: dict[str, tuple[str, str]] = {}
    for comp, keys, rule in (("unet", unet_keys, lambda k: unet_key(k, unet_config)),
                             ("vae", vae_keys, lambda k: vae_key(k, vae_config)),
                             ("text_encoder", text_keys, text_key)):
        for key in keys:
            name = rule(key)
            if name in out:
                raise ValueError(f"{comp} key {key!r} and {out[name]} both map to {name!r}")
            out[name] = (comp, key)
    return out


def to_ldm(unet_sd: Mapping[str, torch.Tensor], vae_sd: Mapping[str, torch.Tensor],
           text_sd: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any],
           vae_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Module state dicts -> one SD1.x single-file state dict (without the DDPM buffers).

    Adds `embeddings.position_ids` (int64 0..n-1, shape [1, n]): SD1.x files carry it, while
    transformers keeps it as a non-persistent buffer.
    """
    sds = {"unet": unet_sd, "vae": vae_sd, "text_encoder": text_sd}
    names = ldm_names(unet_sd, vae_sd, text_sd, unet_config, vae_config)
    out: dict[str, torch.Tensor] = {}
    for name, (comp, key) in names.items():
        t = sds[comp][key]
        out[name] = t.reshape(*t.shape, 1, 1) if is_vae_attention_matrix(name) and t.ndim == 2 else t
    positions = out[TEXT_PREFIX + "embeddings.position_embedding.weight"]
    out[POSITION_IDS] = torch.arange(positions.shape[0], dtype=torch.int64, device=positions.device)[None]
    return out


def from_ldm(ldm: Mapping[str, torch.Tensor], templates: Mapping[str, Mapping[str, torch.Tensor]],
             unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
             convert: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, dict[str, torch.Tensor]]:
    """One SD1.x single-file state dict -> {component: module state dict}.

    `templates` are the modules' own state dicts (meta tensors do): they name the keys to fill and give
    each tensor's shape. `ldm` may be lazy; each tensor is read once and passed through `convert`
    (e.g. a dtype cast) before the next is read. Keys the modules do not use are never read.
    """
    names = ldm_names(templates["unet"], templates["vae"], templates["text_encoder"], unet_config, vae_config)
    missing = [n for n in names if n not in ldm]
    if missing:
        raise KeyError(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for name, (comp, key) in names.items():
        t, shape = ldm[name], templates[comp][key].shape
        if t.shape != shape:
            if t.numel() != shape.numel() or not is_vae_attention_matrix(name):
                raise ValueError(f"{name}: shape {tuple(t.shape)} in the file, {tuple(shape)} expected")
            t = t.reshape(shape)
        out[comp][key] = convert(t)
    return out
