"""Tensor names of single-file checkpoints (the original LDM/SGM layout) and diffusers/transformers modules.

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


# diffusers ResnetBlock2D parameter -> LDM ResBlock parameter (UNet)
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL ADM
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


def text_key(key: str, prefix: str = TEXT_PREFIX) -> str:
    """LDM name of one CLIPTextModel key (transformers 5 drops the `text_model.` level; 4 keeps it)."""
    return prefix + key.removeprefix("text_model.")


# OpenCLIP text tower (SD2's ViT-H, SDXL's bigG) <- transformers CLIPTextModelWithProjection
_OC_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OC_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
_OC_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_OC_FIXED = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}

Op = tuple[Any, ...]  # () as is; ("chunk", i, n): part i of n along dim 0; ("T",): transposed


def openclip_key(key: str, prefix: str) -> tuple[str, Op]:
    """(LDM name, op) of one CLIPTextModelWithProjection key in an OpenCLIP text tower under `prefix`.

    OpenCLIP keeps q, k and v in one `in_proj` tensor (thirds along dim 0) and its projection as the
    transposed matrix (x @ P), as diffusers' SDXL conversion script writes it."""
    if key in _OC_FIXED:
        return prefix + _OC_FIXED[key], ()
    if key == "text_projection.weight":
        return prefix + "text_projection", ("T",)
    if m := _OC_LAYER.match(key):
        i, part, p = m.groups()
        where = f"{prefix}transformer.resblocks.{i}."
        if part in _OC_QKV:
            return f"{where}attn.in_proj_{p}", ("chunk", _OC_QKV.index(part), 3)
        if part in _OC_PARTS:
            return f"{where}{_OC_PARTS[part]}.{p}", ()
    raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")


def component_key(kind: str, key: str, arg: Any) -> tuple[str, Op]:
    """(LDM name, op) of one module key; `kind` is unet | vae | clip | openclip | hf, `arg` the module's diffusers
    config (unet, vae) or the text encoder's prefix in the file (clip, openclip)."""
    if kind == "unet":
        return unet_key(key, arg), ()
    if kind == "vae":
        return vae_key(key, arg), ()
    if kind == "clip":
        return text_key(key, arg), ()
    if kind == "openclip":
        return openclip_key(key, arg)
    if kind == "hf":  # a transformers-layout file of the same module (split text-encoder files)
        return arg + key, ()
    raise ValueError(f"unknown component kind {kind!r}")


Specs = Mapping[str, tuple[str, Any]]  # component -> (kind, config or prefix)


def is_vae_attention_matrix(ldm_name: str) -> bool:
    """True for VAE attention q/k/v/proj_out weights: [C, C, 1, 1] convs in LDM files, [C, C] in diffusers."""
    return ldm_name.startswith(VAE_PREFIX) and bool(_VAE_ATTN_MATRIX.search(ldm_name))


def ldm_names(keys: Mapping[str, Iterable[str]], specs: Specs) -> dict[str, list[tuple[str, str, Op]]]:
    """{LDM name: [(component, module key, op), ...]} for every key of the modules; position_ids excluded."""
    out: dict[str, list[tuple[str, str, Op]]] = {}
    for comp, comp_keys in keys.items():
        kind, arg = specs[comp]
        for key in comp_keys:
            if key.endswith("position_ids"):
                continue
            name, op = component_key(kind, key, arg)
            if name in out and not (op and op[0] == "chunk" and all(o and o[0] == "chunk" for *_, o in out[name])):
                raise ValueError(f"{comp} key {key!r} and {out[name]} both map to {name!r}")
            out.setdefault(name, []).append((comp, key, op))
    return out


def _apply(t: torch.Tensor, op: Op) -> torch.Tensor:
    if not op:
        return t
    if op[0] == "chunk":
        return t.chunk(op[2], dim=0)[op[1]]
    return t.T  # ("T",)


def to_ldm(module_sds: Mapping[str, Mapping[str, torch.Tensor]], specs: Specs) -> dict[str, torch.Tensor]:
    """Module state dicts -> one single-file state dict (without the DDPM buffers or position ids)."""
    names = ldm_names(module_sds, specs)
    out: dict[str, torch.Tensor] = {}
    for name, parts in names.items():
        if len(parts) > 1:  # q, k, v stacked back into one in_proj tensor, in chunk order
            parts = sorted(parts, key=lambda p: p[2][1])
            out[name] = torch.cat([module_sds[c][k] for c, k, _ in parts])
            continue
        comp, key, op = parts[0]
        t = module_sds[comp][key]
        t = t.T if op == ("T",) else t
        out[name] = t.reshape(*t.shape, 1, 1) if is_vae_attention_matrix(name) and t.ndim == 2 else t
    return out


def from_ldm(ldm: Mapping[str, torch.Tensor], templates: Mapping[str, Mapping[str, torch.Tensor]], specs: Specs,
             convert: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, dict[str, torch.Tensor]]:
    """One single-file state dict -> {component: module state dict}.

    `templates` are the modules' own state dicts (meta tensors do): they name the keys to fill and give
    each tensor's shape. `ldm` may be lazy; each tensor is read once and passed through `convert`
    (e.g. a dtype cast) before the next is read. Keys the modules do not use are never read.
    """
    names = ldm_names(templates, specs)
    missing = [n for n in names if n not in ldm]
    if missing:
        raise KeyError(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in templates}
    for name, parts in names.items():
        whole = ldm[name]
        for comp, key, op in parts:
            t, shape = _apply(whole, op), templates[comp][key].shape
            if t.shape != shape:
                if t.numel() != shape.numel() or not is_vae_attention_matrix(name):
                    raise ValueError(f"{name}: shape {tuple(whole.shape)} in the file does not give {tuple(shape)}")
                t = t.reshape(shape)
            out[comp][key] = convert(t.contiguous() if op else t)
    return out
