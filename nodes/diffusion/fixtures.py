"""Sumi's deterministic test checkpoints: one per-tensor rule (`rule_tensor`, see tests/parity/reference/README.md)
for the full-size reference files and the tiny CI models of every family, which differ only in their layouts.

Tiny models are built in their family's real on-disk layout (the names `ldm_layout.to_ldm` gives modules built
from the tiny configs), so loading one exercises the same detection and conversion as a real file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import ldm_layout as L
from .detect import (
    ADM_EMBED,
    ADM_VALUES,
    LATENT_SCALE,
    TEXT_LAYOUTS,
    FamilyInfo,
    TextSpec,
    clip_heads,
    shipped_config,
    text_config,
    unet_heads,
)
from .reading import ST_DTYPES, ST_NAMES

FAMILIES = tuple(TEXT_LAYOUTS)
# the tiny CI models: shape-derived fields only, everything else is the shipped SD1.5 config
TINY_UNET = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 2}
TINY_VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
# per family: UNet levels (width, transformer depth; 0 = no attention) and the middle block's depth
TINY_LEVELS: dict[str, tuple[list[tuple[int, int]], int]] = {
    "sd15": ([(32, 1), (64, 1), (64, 1), (64, 0)], 1),
    "sd2": ([(32, 1), (64, 1), (64, 1), (64, 0)], 1),
    "sdxl": ([(32, 0), (64, 1), (64, 2)], 2),
    "sdxl_refiner": ([(32, 0), (64, 2), (64, 2), (64, 0)], 2),
}

def tensor_seed(name: str, seed: int = 0) -> int:
    """First 8 bytes of SHA-256(name), little-endian, top bit cleared; `seed` is added modulo 2**63
    (seed 0 is the reference checkpoint's rule, any other seed gives a different model)."""
    base = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)
    return (base + seed) % 2**63


def rule_tensor(name: str, shape: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float16,
                seed: int = 0) -> torch.Tensor:
    """The per-tensor rule of tests/parity/reference/README.md: position ids 0..n-1, norm scales 1,
    seeded normal values with biases x0.02 and matrices / sqrt(3 * fan_in) (PyTorch's default spread)."""
    shape = list(shape)
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape).to(dtype)
    if len(shape) == 1 and name.endswith(".weight"):
        return torch.ones(shape, dtype=dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(tensor_seed(name, seed)), dtype=torch.float32)
    # the exact float32 operations of the reference generator: bit-identical output depends on them
    x = x * 0.02 if len(shape) == 1 else x / math.sqrt(3 * math.prod(shape[1:]))
    return x.to(dtype)


def ddpm_buffers(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> dict[str, torch.Tensor]:
    """The 12 DDPM buffers real SD1.x files carry (scaled-linear betas), computed in float64, stored float32."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    var = betas * (1 - a_prev) / (1 - a)
    bufs = {"betas": betas, "alphas_cumprod": a, "alphas_cumprod_prev": a_prev,
            "sqrt_alphas_cumprod": a.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - a).sqrt(),
            "log_one_minus_alphas_cumprod": (1 - a).log(), "sqrt_recip_alphas_cumprod": (1 / a).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / a - 1).sqrt(), "posterior_variance": var,
            "posterior_log_variance_clipped": var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * a_prev.sqrt() / (1 - a),
            "posterior_mean_coef2": (1 - a_prev) * (1 - betas).sqrt() / (1 - a)}
    return {k: t.to(torch.float32) for k, t in bufs.items()}


def content_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The README's content hash: names sorted, each name's bytes then the tensor's raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_safetensors(path: str | os.PathLike, specs: Mapping[str, tuple[list[int], torch.dtype]],
                      make: Callable[[str], torch.Tensor]) -> str:
    """Stream a safetensors file: `make(name)` is called once per tensor, in sorted name order, and the
    tensor is written, hashed and dropped before the next, so peak memory is one tensor. Returns the
    content SHA-256 (see `content_sha256`)."""
    names, header, offset = sorted(specs), {}, 0
    for n in names:
        shape, dtype = specs[n]
        size = math.prod(shape) * dtype.itemsize
        header[n] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes so tensor data stays aligned
    path, digest = Path(path), hashlib.sha256()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for n in names:
            t = make(n)
            if list(t.shape) != list(specs[n][0]) or t.dtype != specs[n][1]:
                raise ValueError(f"{n}: made {t.dtype} {list(t.shape)}, declared {specs[n]}")
            data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(n.encode())
            digest.update(data)
            f.write(data)
            del t, data
    os.replace(partial, path)  # a crash never leaves a half-written file under the real name
    return digest.hexdigest()


def _write_by_rule(path: str | os.PathLike, layout: Mapping[str, tuple[list[int], torch.dtype]], seed: int) -> str:
    bufs = ddpm_buffers()
    specs = dict(layout) | {k: (list(t.shape), t.dtype) for k, t in bufs.items()}
    return write_safetensors(path, specs, lambda n: bufs[n] if n in bufs else rule_tensor(n, *specs[n], seed=seed))


def write_by_rule(path: str | os.PathLike, layout: Mapping[str, tuple[list[int], torch.dtype]], seed: int = 0,
                  buffers: bool = True) -> str:
    """Write `layout` ({name: (shape, dtype)}) by the rule, with the 12 DDPM buffers unless `buffers` is False;
    returns the content SHA-256."""
    bufs = ddpm_buffers() if buffers else {}
    specs = dict(layout) | {k: (list(t.shape), t.dtype) for k, t in bufs.items()}
    return write_safetensors(path, specs, lambda n: bufs[n] if n in bufs else rule_tensor(n, *specs[n], seed=seed))


def write_reference_checkpoint(path: str | os.PathLike, layout: str | os.PathLike, buffers: bool = True) -> str:
    """Write a full-size reference checkpoint from a layout file (`{"tensors": [[name, shape, dtype], ...]}`,
    as the parity references ship them) and return its content SHA-256. Streams: peak memory is one tensor."""
    entries = json.loads(Path(layout).read_text())["tensors"]
    return write_by_rule(path, {n: (s, ST_DTYPES[d]) for n, s, d in entries}, buffers=buffers)


def tiny_text_config(kind: str) -> dict[str, Any]:
    cfg = text_config({**TINY_TEXT, "num_attention_heads": clip_heads(TINY_TEXT["hidden_size"]),
                       "hidden_act": "gelu" if kind == "openclip" else "quick_gelu",
                       "projection_dim": TINY_TEXT["hidden_size"]})
    return cfg


def tiny_info(family: str = "sd15", in_channels: int = 4) -> FamilyInfo:
    """The configs of a family's tiny CI model (the shipped SD1.5 ones, shrunk, with the family's rules);
    `in_channels` 9 gives the family's inpainting variant."""
    levels, middle = TINY_LEVELS[family]
    text = {name: TextSpec(kind, prefix, tiny_text_config(kind))
            for name, (kind, prefix) in TEXT_LAYOUTS[family].items()}
    context = sum(t.config["hidden_size"] for t in text.values())
    widths = [w for w, _ in levels]
    depths = [d or middle for _, d in levels]
    unet = shipped_config("sd15", "unet")
    unet.update(TINY_UNET, block_out_channels=widths, cross_attention_dim=context, in_channels=in_channels,
                down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for _, d in levels],
                up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for _, d in reversed(levels)],
                transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
                use_linear_projection=family != "sd15")
    if family != "sd15":
        unet["attention_head_dim"] = [unet_heads(w) for w in widths]
    if family in ADM_VALUES:
        pooled = text["clip_g"].config["projection_dim"]
        unet.update(addition_embed_type="text_time", addition_time_embed_dim=ADM_EMBED,
                    projection_class_embeddings_input_dim=pooled + ADM_VALUES[family] * ADM_EMBED)
    vae = shipped_config("sd15", "vae")
    vae.update(TINY_VAE, scaling_factor=LATENT_SCALE[family])
    sched = shipped_config("sd15", "scheduler")
    schedule = {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    return FamilyInfo(family, unet, vae, text, LATENT_SCALE[family], {**schedule, "prediction_type": "epsilon"}, {})


def tiny_configs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """UNet, VAE and text encoder configs of the tiny SD1.x CI model."""
    info = tiny_info("sd15")
    return info.unet_config, info.vae_config, info.text["clip_l"].config


def family_layout(info: FamilyInfo) -> dict[str, tuple[list[int], torch.dtype]]:
    """{name: (shape, dtype)} of a family's single file for `info`'s configs (float16, as released files are;
    SD1.x's int64 position ids and SDXL's float16 ones as the real files carry them)."""
    from .checkpoint import build_modules

    modules = build_modules(info)
    names = L.to_ldm({n: m.state_dict() for n, m in modules.items()}, info.specs())
    layout = {n: (list(t.shape), torch.float16) for n, t in names.items()}
    for spec in info.text.values():
        if spec.kind == "clip":  # CLIP-L files carry position ids; OpenCLIP ones do not
            positions = spec.config["max_position_embeddings"]
            dtype = torch.int64 if info.family == "sd15" else torch.float16
            layout[spec.prefix + "embeddings.position_ids"] = ([1, positions], dtype)
        else:
            layout[spec.prefix + "logit_scale"] = ([], torch.float16)
    return layout


def build_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, family: str = "sd15",
                          in_channels: int = 4) -> Path:
    """Write a tiny checkpoint of `family` in its original single-file layout (same rule as the reference files).

    SD1.x and SD2.x files carry the 12 DDPM buffers, SDXL files none (as released). `seed` is added to every
    per-tensor seed (see `tensor_seed`).
    """
    info = tiny_info(family, in_channels)
    write_by_rule(path, family_layout(info), seed, buffers=family in ("sd15", "sd2"))
    return Path(path)


def lora_rule_tensor(name: str, shape: list[int], seed: int = 0) -> torch.Tensor:
    """The reference LoRA rule (shared/reference/parity-next/make_reference_extras.py): alpha 2.0; down / lora_A
    = x / sqrt(fan_in); up / lora_B = x · 0.1; float16, x seeded from the name as for checkpoints."""
    if name.endswith(".alpha"):
        return torch.tensor(2.0, dtype=torch.float16)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(tensor_seed(name, seed)), dtype=torch.float32)
    x = x / math.sqrt(math.prod(shape[1:])) if name.endswith((".lora_down.weight", ".lora_A.weight")) else x * 0.1
    return x.to(torch.float16)


def write_lora_by_rule(path: str | os.PathLike, layout: Mapping[str, list[int]], seed: int = 0) -> str:
    """Write a LoRA file ({name: shape}, float16) by `lora_rule_tensor`; returns its content SHA-256."""
    specs = {n: (list(s), torch.float16) for n, s in layout.items()}
    return write_safetensors(path, specs, lambda n: lora_rule_tensor(n, specs[n][0], seed))


def tiny_lora_layout(family: str = "sd15", fmt: str = "kohya", rank: int = 4) -> dict[str, list[int]]:
    """A LoRA for a tiny model: kohya names (`lora_unet_…` / `lora_te_…` with alpha) on every attention
    projection and text-encoder layer, or diffusers/PEFT names (`unet.….lora_A/B`, no alpha) on every attention's
    proj_in/proj_out and feed-forward and the text encoder's attention."""
    from .checkpoint import build_modules
    from .lora import _TEXT_PREFIXES

    info = tiny_info(family)
    modules = build_modules(info)
    out: dict[str, list[int]] = {}

    def add(name: str, shape: list[int], up: str, down: str, alpha: bool) -> None:
        out[name + up] = [shape[0], rank] + [1] * (len(shape) - 2)
        out[name + down] = [rank, *shape[1:]]
        if alpha:
            out[name + ".alpha"] = []

    for key, p in modules["unet"].state_dict().items():
        path = key.removesuffix(".weight")
        if fmt == "kohya" and ".attn" in key and key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight",
                                                                ".to_out.0.weight")):
            add("lora_unet_" + path.replace(".", "_"), list(p.shape), ".lora_up.weight", ".lora_down.weight", True)
        elif fmt == "peft" and key.endswith((".proj_in.weight", ".proj_out.weight", ".ff.net.0.proj.weight",
                                             ".ff.net.2.weight")):
            add("unet." + path, list(p.shape), ".lora_B.weight", ".lora_A.weight", False)
    for name in info.text:
        kohya, diffusers = _TEXT_PREFIXES[(family, name)]
        for key, p in modules[name].state_dict().items():
            key = key.removeprefix("text_model.")
            if not key.startswith("encoder.layers.") or not key.endswith("_proj.weight") or "self_attn" not in key:
                continue
            path = "text_model." + key.removesuffix(".weight")
            if fmt == "kohya":
                add(kohya + path.replace(".", "_"), list(p.shape), ".lora_up.weight", ".lora_down.weight", True)
            else:
                add(diffusers + path, list(p.shape), ".lora_B.weight", ".lora_A.weight", False)
    return out


def write_reference_embedding(path: str | os.PathLike, classic: bool = False) -> str:
    """The parity-next textual-inversion files (shared/reference/parity-next/make_reference_extras.py's rule):
    `{"emb_params": [4, D]}` as safetensors, or (`classic`) A1111's `.pt` dict with `string_to_param["*"]` [2, D];
    values x(name) / sqrt(3·768), float32. Returns the content SHA-256 over the tensor (as `string_to_param.*` for
    the classic file)."""
    path = Path(path)
    stem = path.name.split(".")[0]
    key, rows = ("string_to_param.*", 2) if classic else ("emb_params", 4)
    g = torch.Generator().manual_seed(tensor_seed(f"{stem}.{key}"))
    vectors = torch.randn([rows, 768], generator=g, dtype=torch.float32) / math.sqrt(3 * 768)
    if classic:
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": stem, "step": 0,
                    "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    else:
        from safetensors.torch import save_file

        save_file({key: vectors}, str(path))
    return content_sha256({key: vectors})


def write_tiny_embedding(path: str | os.PathLike, family: str, name: str, vectors: int = 2) -> None:
    """A textual-inversion file for a tiny family's encoders (seeded from `name`): `{"emb_params": [n, D]}` for
    SD1.x, `{"clip_l": …, "clip_g": …}` for SDXL, float32, scaled like the reference embeddings."""
    from safetensors.torch import save_file

    info = tiny_info(family)
    keys = {"clip_l": "clip_l", "clip_g": "clip_g"} if family in ("sdxl", "sdxl_refiner") else {"clip_l": "emb_params"}
    out = {}
    for encoder, key in keys.items():
        width = info.text[encoder].config["hidden_size"]
        g = torch.Generator().manual_seed(tensor_seed(f"{name}.{key}"))
        out[key] = torch.randn([vectors, width], generator=g, dtype=torch.float32) / math.sqrt(3 * width)
    save_file(out, str(path))


def write_split_files(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, bare: bool = True) -> dict[str, Path]:
    """Split a single-file checkpoint into the files split-file workflows load: the diffusion model (original
    layout, bare or under `model.diffusion_model.`), the VAE (original layout, bare), and each text encoder in
    transformers' layout (`text_model.…`, with `text_projection.weight` for OpenCLIP towers), as ComfyUI's model
    repositories ship them. Returns {component: path}."""
    from safetensors.torch import load_file, save_file

    from .checkpoint import load_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(checkpoint).stem
    sd = load_file(str(checkpoint))
    ck = load_checkpoint(checkpoint, dtype=torch.float16)
    files = {"unet": out_dir / f"{stem}_unet.safetensors", "vae": out_dir / f"{stem}_vae.safetensors"}
    unet = {(k[len(L.UNET_PREFIX):] if bare else k): v for k, v in sd.items() if k.startswith(L.UNET_PREFIX)}
    save_file(unet, str(files["unet"]))
    save_file({k[len(L.VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(L.VAE_PREFIX)}, str(files["vae"]))
    for name, module in ck.text_encoders.items():
        state = module.state_dict()
        if not any(k.startswith("text_model.") for k in state):  # transformers 5 drops the level; files keep it
            state = {"text_model." + k: v for k, v in state.items()}
        files[name] = out_dir / f"{stem}_{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(files[name]))
    return files


def controlnet_layout(info: FamilyInfo) -> dict[str, tuple[list[int], torch.dtype]]:
    """{name: (shape, float16)} of an original-layout ControlNet for a family's UNet config: diffusers'
    `ControlNetModel.from_unet` names mapped back (the UNet's encoder by the UNet rule; `controlnet_down_blocks.i`
    → `zero_convs.i.0`, `controlnet_mid_block` → `middle_block_out.0`, the hint encoder's convs →
    `input_hint_block.0, 2, 4, …`), all under `control_model.`."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        # the hint encoder keeps the released widths (16, 32, 96, 256): every real ControlNet has them
        net = ControlNetModel.from_unet(UNet2DConditionModel.from_config(dict(info.unet_config)))
    out: dict[str, tuple[list[int], torch.dtype]] = {}
    blocks = len(net.controlnet_cond_embedding.blocks)
    for key, t in net.state_dict().items():
        if m := re.match(r"^controlnet_down_blocks\.(\d+)\.(weight|bias)$", key):
            name = f"zero_convs.{m.group(1)}.0.{m.group(2)}"
        elif m := re.match(r"^controlnet_mid_block\.(weight|bias)$", key):
            name = f"middle_block_out.0.{m.group(1)}"
        elif m := re.match(r"^controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)$", key):
            index = 0 if m.group(1) == "conv_in" else (2 * blocks + 2 if m.group(1) == "conv_out"
                                                         else 2 * int(m.group(2)) + 2)
            name = f"input_hint_block.{index}.{m.group(3)}"
        else:
            name = L.unet_key(key, info.unet_config)[len(L.UNET_PREFIX):]
        out["control_model." + name] = (list(t.shape), torch.float16)
    return out


def build_tiny_controlnet(path: str | os.PathLike, family: str = "sd15", seed: int = 0) -> Path:
    """A tiny ControlNet for a family's tiny model, in the original single-file layout, by the reference rule."""
    write_by_rule(path, controlnet_layout(tiny_info(family)), seed, buffers=False)
    return Path(path)


def taesd_layout(part: str) -> dict[str, tuple[list[int], torch.dtype]]:
    """{name: (shape, float16)} of one half of TAESD in madebyollin's original layout (diffusers' AutoencoderTiny
    at its default, released sizes, renamed by `taesd.to_original`)."""
    from diffusers import AutoencoderTiny

    from .taesd import to_original

    with torch.device("meta"):
        sd = AutoencoderTiny().state_dict()
    return {n: (list(t.shape), torch.float16) for n, t in to_original(sd, part).items()}


def build_tiny_taesd(encoder: str | os.PathLike, decoder: str | os.PathLike, seed: int = 0) -> None:
    """Seeded TAESD halves (real sizes: 1.2 M parameters each) by the reference rule; the halves get different
    seeds, since their tensor names coincide."""
    write_by_rule(encoder, taesd_layout("encoder"), seed, buffers=False)
    write_by_rule(decoder, taesd_layout("decoder"), seed + 1, buffers=False)
