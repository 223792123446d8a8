"""Family detection of single-file checkpoints from tensor names and shapes (never file names).

Follows the facts of ComfyUI's `model_detection`: the UNet's shape-derived config (`input_blocks.0.0.weight`,
resblock and transformer keys, `label_emb` for the ADM vector), the text encoders by their prefixes
(SD1 `cond_stage_model.transformer.`, SD2 `cond_stage_model.model.`, SDXL `conditioner.embedders.N.`), the VAE
from its own shapes. Everything not derivable from shapes comes from the shipped SD1.5 configs
(`configs/sd15/`) plus one rule per family (attention heads, the ADM embedding).
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from . import ldm_layout as L
from .reading import CheckpointError

CONFIG_DIR = Path(__file__).parent / "configs"

# (kind, prefix) of each text encoder a family keeps in its file, in the order its conditioning concatenates them
TEXT_LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "sd15": {"clip_l": ("clip", L.TEXT_PREFIX)},
    "sd2": {"clip_h": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"clip_l": ("clip", "conditioner.embedders.0.transformer.text_model."),
             "clip_g": ("openclip", "conditioner.embedders.1.model.")},
    "sdxl_refiner": {"clip_g": ("openclip", "conditioner.embedders.0.model.")},
}
LATENT_SCALE = {"sd15": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
LABELS = {"sd15": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL base", "sdxl_refiner": "SDXL refiner"}
# the ADM vector: pooled bigG output ++ this many 256-wide sinusoidal embeddings of sizes / crops / score
ADM_VALUES = {"sdxl": 6, "sdxl_refiner": 5}
ADM_EMBED = 256
INPAINT_CHANNELS = 9  # inpainting UNets: noisy latent (4) + mask (1) + masked-image latent (4)
SD2_VPRED_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"  # ComfyUI's v-prediction guess

_FOREIGN: tuple[tuple[str, str, str], ...] = (  # (regex on any key, what it is, hint)
    (r"(^|[._])lora[._]|\.hada_|\.lokr_", "a LoRA/LyCORIS adapter", "load it with a LoRA loader node"),
    (r"^model\.diffusion_model\.joint_blocks\.", "an SD3 checkpoint", ""),
    (r"^(model\.diffusion_model\.)?double_blocks\.", "a Flux checkpoint", ""),
    (r"^control_model\.", "a ControlNet", "load it with a ControlNet loader node"),
    (r"^(unet\.)?(down|up)_blocks\.\d+\.(resnets|attentions)\.", "diffusers-layout weights of one component",
     "Sumi reads original single-file checkpoints"),
)
_DEPTH = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.transformer_blocks\.(\d+)\.")


def foreign_kind(keys: list[str]) -> tuple[str, str, str] | None:
    """(what it is, hint, an example key) when a file's names mark it as another kind of model (LoRA, ControlNet,
    SD3, Flux, diffusers-layout weights), else None."""
    for pattern, what, hint in _FOREIGN:
        rx = re.compile(pattern)
        hit = next((k for k in keys if rx.search(k)), None)
        if hit is not None:
            return what, hint, hit
    return None


@dataclass(frozen=True)
class TextSpec:
    """One text encoder in a checkpoint: `kind` clip (transformers layout) or openclip, its prefix, its config."""

    kind: str
    prefix: str
    config: dict[str, Any]


@dataclass(frozen=True)
class FamilyInfo:
    """What `detect` found: the family and the diffusers/transformers configs that fit the file's shapes."""

    family: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text: dict[str, TextSpec]  # name (clip_l, clip_h, clip_g) -> spec, in concatenation order
    latent_scale: float
    schedule: dict[str, Any]  # beta_start, beta_end, beta_schedule, num_train_timesteps, prediction_type
    facts: dict[str, Any]  # the shape-derived LDM facts, per component

    @property
    def label(self) -> str:
        return LABELS[self.family]

    def specs(self) -> L.Specs:
        """ldm_layout component specs of this family's modules."""
        return {"unet": ("unet", self.unet_config), "vae": ("vae", self.vae_config),
                **{name: (t.kind, t.prefix) for name, t in self.text.items()}}


def clip_heads(hidden: int) -> int:
    """Attention heads of a CLIP text encoder of width `hidden` (not stored in the weights).

    Every released CLIP (B, L, H, bigG) uses 64-wide heads, so 768 -> 12; widths that are not a
    multiple of 64 (tiny test models) use 8-wide heads. Shared by the tiny builders and `detect`.
    """
    return hidden // 64 if hidden % 64 == 0 else max(1, hidden // 8)


def unet_heads(channels: int) -> int:
    """Attention heads of an SD2/SDXL UNet level (64 channels per head there; tiny widths: 8 per head)."""
    return clip_heads(channels)


@cache
def _shipped(family: str, part: str) -> dict[str, Any]:
    name = "scheduler/scheduler_config.json" if part == "scheduler" else f"{part}/config.json"
    return json.loads((CONFIG_DIR / family / name).read_text())


def shipped_config(family: str, part: str) -> dict[str, Any]:
    """A copy of one shipped config (`unet`, `vae`, `text_encoder`, `scheduler`); only SD1.5's are shipped:
    the other families differ from it only in what their shapes and rules give."""
    return copy.deepcopy(_shipped("sd15", part))


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(ks: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in ks if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_facts(u: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """LDM UNet hyper-parameters from shapes (`u` has the `model.diffusion_model.` prefix removed)."""
    if "input_blocks.0.0.weight" not in u:
        raise CheckpointError("no UNet input convolution", detected=f"diffusion-model keys e.g. {sorted(u)[:3]}")
    model_channels, in_channels = u["input_blocks.0.0.weight"].shape[:2]
    depth: dict[str, int] = {}
    for k in u:
        if m := _DEPTH.match(k):
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    levels: list[list[tuple[int, int]]] = [[]]
    for i in range(1, _count(u, r"input_blocks\.(\d+)\.")):
        if f"input_blocks.{i}.0.op.weight" in u:
            levels.append([])
        elif f"input_blocks.{i}.0.out_layers.3.weight" in u:
            width = u[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
            levels[-1].append((width, depth.get(f"input_blocks.{i}.1", 0)))
        else:
            raise CheckpointError(f"input block {i} is neither a resblock nor a downsampler")
    if any(len(set(lvl)) != 1 for lvl in levels):
        raise CheckpointError("UNet level with mixed channels or attention", detected=str(levels))
    attn = sorted(k for k in u if k.endswith("transformer_blocks.0.attn2.to_k.weight"))
    proj = sorted(k for k in u if k.endswith(".1.proj_in.weight"))
    return {
        "in_channels": in_channels, "out_channels": u["out.2.weight"].shape[0] if "out.2.weight" in u else None,
        "model_channels": model_channels,
        "channel_mult": [lvl[0][0] // model_channels for lvl in levels],
        "num_res_blocks": [len(lvl) for lvl in levels],
        "transformer_depth": [lvl[0][1] for lvl in levels],
        "transformer_depth_middle": depth.get("middle_block.1", 0),
        "context_dim": u[attn[0]].shape[1] if attn else None,
        "use_linear_in_transformer": u[proj[0]].ndim == 2 if proj else False,
        "adm_in_channels": u["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in u else None,
        "time_embed_dim": u["time_embed.0.weight"].shape[0] if "time_embed.0.weight" in u else None,
        "output_blocks": _count(u, r"output_blocks\.(\d+)\."),
    }


_D_RES = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.conv2\.weight$")
_D_DEPTH = re.compile(r"^(down_blocks\.(\d+)|mid_block)\.attentions\.0\.transformer_blocks\.(\d+)\.")


def diffusers_unet_facts(c: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The facts `unet_facts` gives, from the encoder half of a diffusers-layout UNet or ControlNet
    (`conv_in`, `down_blocks.i.resnets.j`, `….attentions.0.transformer_blocks.k`, `mid_block`, `add_embedding`)."""
    if "conv_in.weight" not in c:
        raise CheckpointError("no UNet input convolution (conv_in)", detected=f"keys e.g. {sorted(c)[:3]}")
    model_channels, in_channels = c["conv_in.weight"].shape[:2]
    widths: dict[int, dict[int, int]] = {}
    depth: dict[str, int] = {}
    for k, t in c.items():
        if m := _D_RES.match(k):
            widths.setdefault(int(m.group(1)), {})[int(m.group(2))] = t.shape[0]
        elif m := _D_DEPTH.match(k):
            level = m.group(2) or "mid"
            depth[level] = max(depth.get(level, 0), int(m.group(3)) + 1)
    if not widths or sorted(widths) != list(range(len(widths))):
        raise CheckpointError("no down blocks of resnets numbered 0..n",
                              detected=f"down blocks {sorted(widths)}; keys e.g. {sorted(c)[:3]}")
    if any(len(set(w.values())) != 1 for w in widths.values()):
        raise CheckpointError("UNet level with mixed channels", detected=str(widths))
    attn = sorted(k for k in c if k.endswith("transformer_blocks.0.attn2.to_k.weight"))
    proj = sorted(k for k in c if k.endswith("attentions.0.proj_in.weight"))
    levels = range(len(widths))
    return {
        "in_channels": in_channels, "out_channels": None, "model_channels": model_channels,
        "channel_mult": [widths[i][0] // model_channels for i in levels],
        "num_res_blocks": [len(widths[i]) for i in levels],
        "transformer_depth": [depth.get(str(i), 0) for i in levels],
        "transformer_depth_middle": depth.get("mid", 0),
        "context_dim": c[attn[0]].shape[1] if attn else None,
        "use_linear_in_transformer": c[proj[0]].ndim == 2 if proj else False,
        "adm_in_channels": c["add_embedding.linear_1.weight"].shape[1] if "add_embedding.linear_1.weight" in c
        else None,
        "time_embed_dim": c["time_embedding.linear_1.weight"].shape[0] if "time_embedding.linear_1.weight" in c
        else None,
        "output_blocks": 0,
    }


def vae_facts(v: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """LDM autoencoder hyper-parameters from shapes (`first_stage_model.` removed)."""
    levels = _count(v, r"encoder\.down\.(\d+)\.")
    try:
        return {
            "in_channels": v["encoder.conv_in.weight"].shape[1], "out_ch": v["decoder.conv_out.weight"].shape[0],
            "channels": [v[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)],
            "num_res_blocks": _count(v, r"encoder\.down\.0\.block\.(\d+)\."),
            "z_channels": v["encoder.conv_out.weight"].shape[0] // 2, "embed_dim": v["post_quant_conv.weight"].shape[1],
        }
    except KeyError as e:
        raise CheckpointError(f"incomplete VAE: no {L.VAE_PREFIX}{e.args[0]}", detected=f"{len(v)} VAE tensors") from e


def clip_facts(t: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """CLIP text encoder (transformers layout) hyper-parameters from shapes (its prefix removed)."""
    try:
        vocab, hidden = t["embeddings.token_embedding.weight"].shape
        return {"hidden_size": hidden, "vocab_size": vocab,
                "max_position_embeddings": t["embeddings.position_embedding.weight"].shape[0],
                "num_hidden_layers": _count(t, r"encoder\.layers\.(\d+)\."),
                "intermediate_size": t["encoder.layers.0.mlp.fc1.weight"].shape[0],
                "num_attention_heads": clip_heads(hidden), "hidden_act": "quick_gelu", "projection_dim": hidden}
    except KeyError as e:
        raise CheckpointError(f"incomplete CLIP text encoder: no {e.args[0]}") from e


def openclip_facts(t: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """OpenCLIP text tower hyper-parameters from shapes (its prefix removed); GELU, as ViT-H and bigG use."""
    try:
        vocab, hidden = t["token_embedding.weight"].shape
        return {"hidden_size": hidden, "vocab_size": vocab,
                "max_position_embeddings": t["positional_embedding"].shape[0],
                "num_hidden_layers": _count(t, r"transformer\.resblocks\.(\d+)\."),
                "intermediate_size": t["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                "num_attention_heads": clip_heads(hidden), "hidden_act": "gelu",
                "projection_dim": t["text_projection"].shape[1] if "text_projection" in t else hidden}
    except KeyError as e:
        raise CheckpointError(f"incomplete OpenCLIP text encoder: no {e.args[0]}") from e


def text_config(facts: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers CLIPTextConfig dict: the shipped SD1.5 text config with the shape-derived fields."""
    cfg = shipped_config("sd15", "text_encoder")
    cfg.update(facts)
    return cfg


def describe(u: dict[str, Any]) -> str:
    return (f"UNet model_channels {u['model_channels']}, channel_mult {u['channel_mult']}, in {u['in_channels']}, "
            f"context_dim {u['context_dim']}, linear {u['use_linear_in_transformer']}, adm {u['adm_in_channels']}")


def _family(state_dict: Mapping[str, torch.Tensor], u: dict[str, Any]) -> str:
    """The family from which text encoders the file holds and the UNet's shape; raises naming what it is."""
    keys = state_dict.keys()
    has = {name: any(k.startswith(p) for k in keys) for name, p in (
        ("sd1_text", "cond_stage_model.transformer."), ("sd2_text", "cond_stage_model.model."),
        ("xl_0_clip", "conditioner.embedders.0.transformer."), ("xl_0_open", "conditioner.embedders.0.model."),
        ("xl_1_open", "conditioner.embedders.1.model."))}
    what = describe(u)
    if u["in_channels"] not in (4, INPAINT_CHANNELS) or u["out_channels"] != 4:
        kind = {8: "instruct-pix2pix"}.get(u["in_channels"], "unusual")
        raise CheckpointError(f"{kind} UNet ({u['in_channels']} input channels)", detected=what,
                              hint="instruct-pix2pix checkpoints are not supported yet")
    if has["xl_0_clip"] and has["xl_1_open"]:
        family = "sdxl"
    elif has["xl_0_open"]:
        family = "sdxl_refiner"
    elif has["sd2_text"]:
        if u["adm_in_channels"] is not None:
            raise CheckpointError("an SD2.x unCLIP checkpoint (image-embedding ADM input)", detected=what)
        family = "sd2"
    elif has["sd1_text"]:
        family = "sd15"
    else:
        raise CheckpointError("a diffusion model without a known text encoder; not a full checkpoint", detected=what,
                              hint="a UNet-only loader is not available yet")
    if (u["adm_in_channels"] is None) != (family not in ADM_VALUES):
        raise CheckpointError(f"{LABELS[family]} text encoders but a UNet "
                              f"{'without' if u['adm_in_channels'] is None else 'with'} an ADM input", detected=what)
    if len(set(u["num_res_blocks"])) != 1 or u["time_embed_dim"] != 4 * u["model_channels"]:
        raise CheckpointError("UNet with per-level block counts or an unusual time embedding", detected=what)
    return family


def _unet_config(family: str, uf: dict[str, Any], pooled_dim: int | None) -> dict[str, Any]:
    unet = shipped_config("sd15", "unet")
    attn = [d > 0 for d in uf["transformer_depth"]]
    widths = [uf["model_channels"] * m for m in uf["channel_mult"]]
    # levels without attention take the middle block's depth: diffusers gives the middle block the last level's
    fill = uf["transformer_depth_middle"] or 1
    depths = [d or fill for d in uf["transformer_depth"]]
    if uf["transformer_depth_middle"] and depths[-1] != fill:
        raise CheckpointError("middle block depth differs from the last level's", detected=describe(uf))
    unet.update(
        in_channels=uf["in_channels"], out_channels=uf["out_channels"], block_out_channels=widths,
        layers_per_block=uf["num_res_blocks"][0], cross_attention_dim=uf["context_dim"],
        use_linear_projection=uf["use_linear_in_transformer"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        mid_block_type="UNetMidBlock2DCrossAttn" if uf["transformer_depth_middle"] else "UNetMidBlock2D",
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
    )
    if family != "sd15":  # SD2 and SDXL: 64 channels per attention head (SD1.x: 8 heads everywhere)
        unet["attention_head_dim"] = [unet_heads(w) for w in widths]
    if family in ADM_VALUES:
        assert pooled_dim is not None
        unet.update(addition_embed_type="text_time", addition_time_embed_dim=ADM_EMBED,
                    projection_class_embeddings_input_dim=uf["adm_in_channels"])
        if uf["adm_in_channels"] != pooled_dim + ADM_VALUES[family] * ADM_EMBED:
            raise CheckpointError(f"ADM input of {uf['adm_in_channels']} channels does not fit a pooled output of "
                                  f"{pooled_dim} and {ADM_VALUES[family]} size embeddings", detected=describe(uf))
    return unet


def detect(state_dict: Mapping[str, torch.Tensor],
           read: Callable[[str], torch.Tensor] | None = None) -> FamilyInfo:
    """Family and configs of a single-file checkpoint from key names and tensor shapes (meta tensors do).

    `read(name)` gives a tensor's values where a family's defaults depend on them (SD2's v-prediction guess);
    without it, such guesses fall back to epsilon prediction. Raises CheckpointError naming what was found
    when the layout is not a supported family.
    """
    keys = list(state_dict)
    if not keys:
        raise CheckpointError("the file holds no tensors")
    for pattern, what, hint in _FOREIGN:
        rx = re.compile(pattern)
        hits = [k for k in keys if rx.search(k)]
        if hits:
            raise CheckpointError(f"this is {what}, not a Stable Diffusion checkpoint", hint=hint,
                                  detected=f"{what}: {len(hits)} of {len(keys)} tensors, e.g. {hits[0]!r}")
    u = _strip(state_dict, L.UNET_PREFIX)
    if len(u) <= 5:  # ComfyUI's threshold for "this prefix holds a diffusion model"
        raise CheckpointError("no Stable Diffusion UNet found",
                              detected=f"{len(keys)} tensors, e.g. {sorted(keys)[:3]}")
    uf = unet_facts(u)
    family = _family(state_dict, uf)
    v = _strip(state_dict, L.VAE_PREFIX)
    if not v:
        raise CheckpointError(f"{LABELS[family]} diffusion model without a VAE; not a full checkpoint",
                              detected=describe(uf), hint="a UNet-only loader is not available yet")
    vf = vae_facts(v)
    if vf["z_channels"] != 4 or vf["embed_dim"] != 4:
        raise CheckpointError(f"VAE with {vf['z_channels']} latent channels (SD1.x/SD2.x/SDXL have 4)",
                              detected=str(vf))

    text: dict[str, TextSpec] = {}
    tfacts: dict[str, Any] = {}
    for name, (kind, prefix) in TEXT_LAYOUTS[family].items():
        if kind == "clip" and family == "sd15" and prefix + "embeddings.token_embedding.weight" not in state_dict:
            prefix = "cond_stage_model.transformer."  # older SD1 files have no `text_model.` level
        tf = (clip_facts if kind == "clip" else openclip_facts)(_strip(state_dict, prefix))
        text[name], tfacts[name] = TextSpec(kind, prefix, text_config(tf)), tf
    width = sum(t.config["hidden_size"] for t in text.values())
    if uf["context_dim"] != width:
        raise CheckpointError(f"UNet context_dim {uf['context_dim']} does not match the text encoder width {width}",
                              detected=describe(uf))
    pooled = text["clip_g"].config["projection_dim"] if "clip_g" in text else None
    unet = _unet_config(family, uf, pooled)

    vae = shipped_config("sd15", "vae")
    vae.update(in_channels=vf["in_channels"], out_channels=vf["out_ch"], latent_channels=vf["z_channels"],
               block_out_channels=vf["channels"], layers_per_block=vf["num_res_blocks"],
               down_block_types=["DownEncoderBlock2D"] * len(vf["channels"]),
               up_block_types=["UpDecoderBlock2D"] * len(vf["channels"]), scaling_factor=LATENT_SCALE[family])
    sched = shipped_config("sd15", "scheduler")
    schedule = {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    schedule["prediction_type"] = "epsilon"
    probe = L.UNET_PREFIX + SD2_VPRED_PROBE
    if family == "sd2" and read is not None and probe in state_dict and uf["in_channels"] == 4:
        # ComfyUI's rule: v-prediction SD2 files (768-v) have visibly larger norm biases there.
        if float(read(probe).float().std()) > 0.09:
            schedule["prediction_type"] = "v_prediction"
    return FamilyInfo(family, unet, vae, text, LATENT_SCALE[family], schedule,
                      {"unet": uf, "vae": vf, **tfacts})


# ---------------------------------------------------------------- split files (one component per file)


def unet_only_family(uf: dict[str, Any]) -> tuple[str, int | None]:
    """(family, pooled width) of a diffusion model file from its UNet alone (ComfyUI's UNet-config match): no ADM
    and linear projections → SD2.x, no ADM → SD1.x; an ADM input of pooled + 5·256 whose pooled width equals the
    context → SDXL refiner, else SDXL base with pooled = ADM − 6·256."""
    adm, ctx = uf["adm_in_channels"], uf["context_dim"]
    if uf["in_channels"] not in (4, INPAINT_CHANNELS) or uf["out_channels"] != 4:
        kind = {8: "instruct-pix2pix"}.get(uf["in_channels"], "unusual")
        raise CheckpointError(f"{kind} UNet ({uf['in_channels']} input channels)", detected=describe(uf),
                              hint="instruct-pix2pix models are not supported yet")
    if ctx is None:
        raise CheckpointError("a UNet without cross-attention", detected=describe(uf))
    if adm is None:
        return ("sd2" if uf["use_linear_in_transformer"] else "sd15"), None
    if adm - ADM_VALUES["sdxl_refiner"] * ADM_EMBED == ctx:
        return "sdxl_refiner", ctx
    return "sdxl", adm - ADM_VALUES["sdxl"] * ADM_EMBED


def detect_diffusion_model(state_dict: Mapping[str, torch.Tensor],
                           read: Callable[[str], torch.Tensor] | None = None) -> tuple[FamilyInfo, str]:
    """(family info with only the UNet config filled, the UNet's key prefix in the file) of a diffusion model file
    (UNETLoader): original layout, bare or under `model.diffusion_model.`."""
    keys = list(state_dict)
    prefix = L.UNET_PREFIX if sum(k.startswith(L.UNET_PREFIX) for k in keys) > 5 else ""
    u = _strip(state_dict, prefix)
    if "input_blocks.0.0.weight" not in u:
        for pattern, what, hint in _FOREIGN:
            if any(re.search(pattern, k) for k in keys):
                raise CheckpointError(f"this is {what}, not a Stable Diffusion UNet", hint=hint,
                                      detected=f"{len(keys)} tensors, e.g. {sorted(keys)[:2]}")
        raise CheckpointError("no UNet in the original layout found", detected=f"{len(keys)} tensors, "
                              f"e.g. {sorted(keys)[:3]}", hint="Sumi reads original-layout (LDM/SGM) UNet files")
    uf = unet_facts(u)
    family, pooled = unet_only_family(uf)
    if len(set(uf["num_res_blocks"])) != 1 or uf["time_embed_dim"] != 4 * uf["model_channels"]:
        raise CheckpointError("UNet with per-level block counts or an unusual time embedding", detected=describe(uf))
    unet = _unet_config(family, uf, pooled)
    sched = shipped_config("sd15", "scheduler")
    schedule = {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    schedule["prediction_type"] = "epsilon"
    probe = prefix + SD2_VPRED_PROBE
    if family == "sd2" and read is not None and probe in state_dict and float(read(probe).float().std()) > 0.09:
        schedule["prediction_type"] = "v_prediction"
    return FamilyInfo(family, unet, {}, {}, LATENT_SCALE[family], schedule, {"unet": uf}), prefix


# text encoders of other model families, by one key each (regex, what the file is)
_FOREIGN_TEXT: tuple[tuple[str, str], ...] = (
    (r"^(encoder\.)?block\.1\.layer\.0\.SelfAttention\.relative_attention_bias\.",
     "a UMT5 text encoder (Wan's)"),
    (r"^(encoder\.)?block\.\d+\.layer\.0\.SelfAttention\.q\.weight$",
     "a T5 text encoder (T5-XXL of SD3/Flux, or another T5)"),
    (r"^(model\.)?(language_model\.)?layers\.\d+\.self_attn\.q_proj\.weight$",
     "a decoder-only language model (Llama / Qwen / Gemma family: HiDream, Qwen-Image, Lumina 2, …)"),
    (r"^(vision_model\.|visual\.)", "a CLIP vision (image) encoder"),
    (r"^model\.diffusion_model\.", "a full checkpoint or diffusion model"),
)
TEXT_ENCODERS = {"clip_l": "CLIP-L", "clip_h": "OpenCLIP-H", "clip_g": "OpenCLIP-bigG", "openclip": "OpenCLIP"}


def foreign_text_encoder(keys: Iterable[str]) -> str | None:
    """What a text-encoder file that is no CLIP is, from its names (`_FOREIGN_TEXT`), or None."""
    keys = list(keys)
    for pattern, what in _FOREIGN_TEXT:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return what
    return None


def describe_text_encoder(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One phrase for what a text-encoder file appears to be (a CLIP by name and width, or what else it is)."""
    try:
        name, spec = detect_text_encoder(state_dict)
    except CheckpointError as e:
        return foreign_text_encoder(state_dict) or e.message
    return f"a {TEXT_ENCODERS[name]} text encoder ({spec.config['hidden_size']} wide)"


def detect_text_encoder(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, TextSpec]:
    """(which encoder: clip_l / clip_h / clip_g, its spec) of a text-encoder file (CLIPLoader, DualCLIPLoader):
    transformers layout (`text_model.…`, with `text_projection.weight` for OpenCLIP towers converted to it) or the
    OpenCLIP layout (`token_embedding.weight`, `transformer.resblocks.…`). The width tells the encoder apart:
    768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG (other widths: by projection and activation of the file)."""
    keys = set(state_dict)
    if "token_embedding.weight" in keys and any(k.startswith("transformer.resblocks.") for k in keys):
        facts = openclip_facts(state_dict)
        kind, prefix = "openclip", ""
    else:
        prefix = "text_model." if "text_model.embeddings.token_embedding.weight" in keys else ""
        if prefix + "embeddings.token_embedding.weight" not in keys:
            detected = f"{len(keys)} tensors, e.g. {sorted(keys)[:3]}"
            if (what := foreign_text_encoder(keys)) is not None:
                raise CheckpointError(f"this is {what}, not a CLIP text encoder", detected=detected,
                                      hint="Sumi runs the CLIP text encoders of SD1.x, SD2.x and SDXL")
            raise CheckpointError("not a CLIP text encoder (no token embedding)", detected=detected)
        facts = clip_facts(_strip(state_dict, prefix))
        if "text_projection.weight" in keys:
            facts["projection_dim"] = state_dict["text_projection.weight"].shape[0]
            facts["hidden_act"] = "gelu"
            kind, prefix = "hf", ""
        else:
            kind = "clip"
    width = facts["hidden_size"]
    name = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}.get(width)
    if name is None:  # tiny and unusual widths: OpenCLIP towers carry a projection, CLIP-L files do not; which
        name = "openclip" if kind in ("openclip", "hf") else "clip_l"  # OpenCLIP tower: the loader's type says
    return name, TextSpec(kind, prefix, text_config(facts))


def detect_vae(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], str]:
    """(diffusers AutoencoderKL config, the LDM key prefix) of a VAE file in the original layout (bare or under
    `first_stage_model.`)."""
    prefix = L.VAE_PREFIX if any(k.startswith(L.VAE_PREFIX) for k in state_dict) else ""
    v = _strip(state_dict, prefix)
    if "encoder.conv_in.weight" not in v or "decoder.conv_out.weight" not in v:
        if any(k.startswith("taesd_") or k.startswith(("encoder.layers.", "decoder.layers.")) for k in state_dict):
            raise CheckpointError("a TAESD autoencoder (diffusers' AutoencoderTiny layout), not a KL VAE",
                                  hint="put the original taesd_encoder / taesd_decoder files (or taesdxl_…) in "
                                       "models/vae_approx and choose taesd / taesdxl in Load VAE")
        raise CheckpointError("not a KL autoencoder (VAE) in the original layout",
                              detected=f"{len(state_dict)} tensors, e.g. {sorted(state_dict)[:3]}")
    vf = vae_facts(v)
    vae = shipped_config("sd15", "vae")
    vae.update(in_channels=vf["in_channels"], out_channels=vf["out_ch"], latent_channels=vf["z_channels"],
               block_out_channels=vf["channels"], layers_per_block=vf["num_res_blocks"],
               down_block_types=["DownEncoderBlock2D"] * len(vf["channels"]),
               up_block_types=["UpDecoderBlock2D"] * len(vf["channels"]))
    if vf["z_channels"] != 4:
        raise CheckpointError(f"VAE with {vf['z_channels']} latent channels (SD1.x/SD2.x/SDXL have 4)",
                              detected=str(vf))
    return vae, prefix
