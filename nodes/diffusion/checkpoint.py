"""SD1.x single-file checkpoints: read them safely, detect the family from tensor names and shapes, load
them into diffusers/transformers modules, and write Sumi's deterministic test checkpoints.

Detection follows the facts of ComfyUI's `model_detection` (names and shapes only, never file names):
the UNet config comes from `input_blocks.0.0.weight`, the resblock and transformer keys; the VAE and
text encoder configs from their own shapes; everything not derivable from shapes comes from the shipped
config folder `configs/<family>/`. The file is read once, tensor by tensor, into modules built on the
meta device, so a checkpoint costs one copy of its weights in the requested dtype.

Test checkpoints use one per-tensor rule (`rule_tensor`, see tests/parity/reference/README.md): the
full-size reference file and the tiny CI model differ only in their layouts.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion import ldm_layout as L

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this module may reach the Hugging Face hub

CONFIG_DIR = Path(__file__).parent / "configs"
REFERENCE_LAYOUT = Path(__file__).resolve().parents[2] / "tests" / "parity" / "reference" / "sd15_layout.json"
REFERENCE_SHA256 = "dd2116b6aa05a4289800031c66d179dd75bd8ed8da8540c0fc80d3bb4d9f355c"
SUPPORTED = ("sd15",)
SUPPORTED_TEXT = "SD1.x single-file checkpoints (.safetensors, or .ckpt/.pt/.pth/.bin holding plain tensors)"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# the tiny CI model: shape-derived fields only, everything else is the shipped SD1.5 config
TINY_UNET = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 2}
TINY_VAE = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class CheckpointError(Exception):
    """A file Sumi will not load. `reason` is one of REASONS; `detected` says what was found,
    `supported` which families would load."""

    REASONS = ("not_found", "unreadable", "unsafe_pickle", "unsupported", "mismatch")

    def __init__(self, message: str, *, reason: str = "unsupported", path: str | os.PathLike | None = None,
                 detected: str = "", hint: str = "") -> None:
        self.message, self.reason, self.detected, self.hint = message, reason, detected, hint
        self.path = str(path) if path else None
        self.supported = SUPPORTED
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [f"{self.path}: {self.message}" if self.path else self.message]
        if self.detected:
            parts.append(f"detected: {self.detected}")
        if self.reason in ("unsupported", "mismatch"):
            parts.append(f"supported: {SUPPORTED_TEXT}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "; ".join(parts)


@dataclass(frozen=True)
class FamilyInfo:
    """What `detect` found: the family and the diffusers/transformers configs that fit the file's shapes."""

    family: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_config: dict[str, Any]
    text_prefix: str  # where this file keeps the CLIP text model (older SD1 files have no `text_model.`)
    latent_scale: float
    schedule: dict[str, Any]
    facts: dict[str, Any]  # the shape-derived LDM facts, per component


@dataclass
class Checkpoint:
    """A loaded SD1.x checkpoint: eval-mode modules with gradients off, and what samplers need to know."""

    family: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    latent_scale: float
    schedule: dict[str, Any]  # beta_start, beta_end, beta_schedule, num_train_timesteps, prediction_type
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_config: dict[str, Any]
    path: Path | None = None


# ---------------------------------------------------------------- reading


class _Lazy(Mapping[str, torch.Tensor]):
    """Names and shapes up front (`meta`), tensor data only when asked for (`get`); every tensor returned
    is the caller's own (never a view of a file mapping or of a reused buffer)."""

    def __init__(self, meta: Mapping[str, torch.Tensor], get: Callable[[str], torch.Tensor]) -> None:
        self.meta, self._get = meta, get

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self.meta

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        return self._get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)


class _SafetensorsReader:
    """A .safetensors file read with plain `readinto` calls, tensor by tensor.

    Not memory-mapped on purpose: pages of a mapping count towards the process's resident memory, so a
    mapped 2 GB fp16 file converted to 4 GB of fp32 peaks at 6 GB. Here a tensor already in the wanted
    dtype is read straight into its own storage, and one that needs a cast passes through a single reused
    staging buffer, so loading peaks at the converted weights plus the largest tensor.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # closed by close()
        self._stage = torch.empty(0, dtype=torch.uint8)
        try:
            self.entries = self._parse_header()
        except BaseException:
            self._file.close()
            raise
        self.meta = {k: torch.empty(shape, dtype=dt, device="meta") for k, (dt, shape, _, _) in self.entries.items()}

    def _parse_header(self) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        start, data = 8 + n, size - 8 - n
        entries = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = _ST_DTYPES[e["dtype"]], [int(s) for s in e["shape"]], e["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"tensor {name!r}: bad header entry {e!r}") from exc
            nbytes = math.prod(shape) * dtype.itemsize
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data) \
                    or end - begin != nbytes or any(s < 0 for s in shape):
                raise ValueError(f"tensor {name!r}: offsets {begin}..{end} do not hold shape {shape} "
                                 f"{e['dtype']} inside {data} data bytes")
            entries[name] = (dtype, shape, start + begin, nbytes)
        return entries

    def _read(self, offset: int, out: torch.Tensor) -> None:
        view = out.reshape(-1).view(torch.uint8).numpy()
        self._file.seek(offset)
        if self._file.readinto(view) != view.nbytes:
            raise CheckpointError("the file ended inside a tensor (was it changed while loading?)",
                                  reason="unreadable", path=self.path)

    def read(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """A new tensor holding `name`, cast to `dtype` and moved to `device` on the way."""
        stored, shape, offset, nbytes = self.entries[name]
        dtype = dtype or stored
        if dtype == stored and torch.device(device).type == "cpu":
            out = torch.empty(shape, dtype=stored)
            self._read(offset, out)
            return out
        if self._stage.numel() < nbytes:
            self._stage = torch.empty(nbytes, dtype=torch.uint8)
        staged = self._stage[:nbytes]
        self._read(offset, staged)
        out = staged.view(stored).reshape(shape).to(device=device, dtype=dtype)  # a copy: dtype/device differ
        return out

    def order(self) -> list[str]:
        """Tensor names in file order (sequential reads)."""
        return sorted(self.entries, key=lambda k: self.entries[k][2])

    def close(self) -> None:
        self._stage = torch.empty(0, dtype=torch.uint8)
        self._file.close()


class _Source:
    """An open checkpoint: `meta` (names → meta tensors), `read(name, device, dtype)` giving a new tensor
    per call, and `order()`, the names in the order reading them is cheapest."""

    def __init__(self, meta: Mapping[str, torch.Tensor], read: Callable[..., torch.Tensor],
                 order: Callable[[], list[str]]) -> None:
        self.meta, self.read, self.order = meta, read, order


@contextlib.contextmanager
def _open(path: Path) -> Iterator[_Source]:
    if not path.is_file():
        raise CheckpointError("file not found", reason="not_found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            reader = _SafetensorsReader(path)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"not a readable safetensors file ({e})", reason="unreadable", path=path) from e
        try:
            yield _Source(reader.meta, reader.read, reader.order)
        finally:
            reader.close()
    elif suffix in PICKLE_SUFFIXES:
        sd = _torch_load(path)

        def read(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
            t = sd[name]
            out = t.to(device=device, dtype=dtype or t.dtype)
            return out.clone() if out is t else out  # never hand out a tensor that shares the file's mmap

        yield _Source(sd, read, lambda: list(sd))
    else:
        raise CheckpointError(f"unknown checkpoint extension {suffix!r}", path=path,
                              hint="use .safetensors (or .ckpt/.pt/.pth/.bin)")


class _Prefetch(Mapping[str, torch.Tensor]):
    """Reads and casts tensors on a background thread, in file order, while the caller does other work
    (importing diffusers and building the modules: about 4 s of Python that holds the GIL, while reading
    and casting release it). `self[name]` waits for that tensor; a reading error is raised there."""

    def __init__(self, source: _Source, names: list[str], device: str | torch.device, dtype: torch.dtype) -> None:
        self.meta, self._done = source.meta, {}
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._pending = set(names)
        self._thread = threading.Thread(target=self._run, args=(source, names, device, dtype),
                                        name="sumi-checkpoint-read", daemon=True)
        self._thread.start()

    def _run(self, source: _Source, names: list[str], device: str | torch.device, dtype: torch.dtype) -> None:
        try:
            for name in names:
                if self._stop:
                    return
                t = source.read(name, device, dtype if source.meta[name].is_floating_point() else None)
                with self._cond:
                    self._done[name] = t
                    self._pending.discard(name)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the reader of the next tensor
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def __contains__(self, name: object) -> bool:
        return name in self.meta

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.meta:
            raise KeyError(name)
        with self._cond:
            while name in self._pending and self._error is None:
                self._cond.wait()
            if name in self._done:
                return self._done.pop(name)
            if self._error is not None:
                raise self._error
        raise KeyError(f"{name} was not prefetched")

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._done.clear()


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps a zip-format file on disk until each tensor is used; the legacy format cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # weights_only reports damaged bytes as an UnpicklingError too
            raise CheckpointError("not a readable PyTorch file (damaged pickle)", reason="unreadable",
                                  path=path) from e
        raise CheckpointError("refused for safety: the pickle holds objects other than plain tensors",
                              reason="unsafe_pickle", path=path, detected=f"pickled object {found.group(1)}",
                              hint="convert the file to .safetensors with a trusted tool") from e
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"not a readable PyTorch file ({type(e).__name__}: {e})", reason="unreadable",
                              path=path) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"holds a {type(obj).__name__}, not a state dict", reason="unreadable", path=path)
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file. Pickles load only with `weights_only=True`; never the network."""
    with _open(Path(path)) as source:
        return {k: source.read(k) for k in source.order()}


# ---------------------------------------------------------------- detection

_FOREIGN: tuple[tuple[str, str, str], ...] = (  # (regex on any key, what it is, hint)
    (r"(^|[._])lora[._]|\.hada_|\.lokr_", "a LoRA/LyCORIS adapter", "load it with a LoRA loader node"),
    (r"^conditioner\.embedders\.", "an SDXL checkpoint", "SDXL support is planned, not yet available"),
    (r"^cond_stage_model\.model\.", "an SD2.x checkpoint (OpenCLIP text encoder)", "SD2.x support is planned"),
    (r"^model\.diffusion_model\.joint_blocks\.", "an SD3 checkpoint", ""),
    (r"^(model\.diffusion_model\.)?double_blocks\.", "a Flux checkpoint", ""),
    (r"^(unet\.)?(down|up)_blocks\.\d+\.(resnets|attentions)\.", "diffusers-layout weights of one component",
     "Sumi reads original single-file checkpoints"),
)
_DEPTH = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.transformer_blocks\.(\d+)\.")


def clip_heads(hidden: int) -> int:
    """Attention heads of a CLIP text encoder of width `hidden` (not stored in the weights).

    Every released CLIP (B, L, H, bigG) uses 64-wide heads, so 768 -> 12; widths that are not a
    multiple of 64 (tiny test models) use 8-wide heads. Shared by the tiny builder and `detect`.
    """
    return hidden // 64 if hidden % 64 == 0 else max(1, hidden // 8)


@cache
def _shipped(family: str, part: str) -> dict[str, Any]:
    name = "scheduler/scheduler_config.json" if part == "scheduler" else f"{part}/config.json"
    return json.loads((CONFIG_DIR / family / name).read_text())


def shipped_config(family: str, part: str) -> dict[str, Any]:
    """A copy of one shipped config (`unet`, `vae`, `text_encoder`, `scheduler`) of a family."""
    return copy.deepcopy(_shipped(family, part))


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(ks: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in ks if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _unet_facts(u: Mapping[str, torch.Tensor]) -> dict[str, Any]:
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


def _vae_facts(v: Mapping[str, torch.Tensor]) -> dict[str, Any]:
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


def _text_facts(t: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """CLIP text encoder hyper-parameters from shapes (its prefix removed)."""
    try:
        vocab, hidden = t["embeddings.token_embedding.weight"].shape
        return {"hidden_size": hidden, "vocab_size": vocab,
                "max_position_embeddings": t["embeddings.position_embedding.weight"].shape[0],
                "num_hidden_layers": _count(t, r"encoder\.layers\.(\d+)\."),
                "intermediate_size": t["encoder.layers.0.mlp.fc1.weight"].shape[0],
                "num_attention_heads": clip_heads(hidden)}
    except KeyError as e:
        raise CheckpointError(f"incomplete CLIP text encoder: no {e.args[0]}") from e


def _describe(u: dict[str, Any]) -> str:
    return (f"UNet model_channels {u['model_channels']}, channel_mult {u['channel_mult']}, in {u['in_channels']}, "
            f"context_dim {u['context_dim']}, linear {u['use_linear_in_transformer']}, adm {u['adm_in_channels']}")


def _unet_family(u: dict[str, Any], text_hidden: int | None) -> str:
    """'sd15', or raise naming what this UNet is instead."""
    what = _describe(u)
    if u["adm_in_channels"] is not None:
        raise CheckpointError("UNet with a class/size embedding (SDXL, SDXL refiner or SD2 unCLIP)", detected=what)
    if u["use_linear_in_transformer"] or u["context_dim"] == 1024:
        raise CheckpointError("SD2.x-style UNet", detected=what, hint="SD2.x support is planned")
    if u["in_channels"] != 4 or u["out_channels"] != 4:
        kind = {9: "SD1.x inpainting", 8: "instruct-pix2pix"}.get(u["in_channels"], "unusual")
        raise CheckpointError(f"{kind} UNet ({u['in_channels']} input channels)", detected=what)
    if u["context_dim"] is None or u["context_dim"] != text_hidden:
        raise CheckpointError(f"UNet context_dim {u['context_dim']} does not match the text encoder width "
                              f"{text_hidden}", detected=what)
    if len(set(u["num_res_blocks"])) != 1 or u["time_embed_dim"] != 4 * u["model_channels"]:
        raise CheckpointError("UNet with per-level block counts or an unusual time embedding", detected=what)
    return "sd15"


def detect(state_dict: Mapping[str, torch.Tensor]) -> FamilyInfo:
    """Family and configs of a single-file checkpoint from key names and tensor shapes (meta tensors do).

    Raises CheckpointError naming what was found when the layout is not a supported family.
    """
    keys = list(state_dict)
    if not keys:
        raise CheckpointError("the file holds no tensors")
    for pattern, what, hint in _FOREIGN:
        rx = re.compile(pattern)
        hits = [k for k in keys if rx.search(k)]
        if hits:
            raise CheckpointError(f"this is {what}, not an SD1.x checkpoint", hint=hint,
                                  detected=f"{what}: {len(hits)} of {len(keys)} tensors, e.g. {hits[0]!r}")
    u = _strip(state_dict, L.UNET_PREFIX)
    if len(u) <= 5:  # ComfyUI's threshold for "this prefix holds a diffusion model"
        raise CheckpointError("no Stable Diffusion UNet found",
                              detected=f"{len(keys)} tensors, e.g. {sorted(keys)[:3]}")
    text_prefix = next((p for p in (L.TEXT_PREFIX, "cond_stage_model.transformer.")
                        if p + "embeddings.token_embedding.weight" in state_dict), None)
    v = _strip(state_dict, L.VAE_PREFIX)
    if text_prefix is None or not v:
        missing = " and ".join(n for n, gone in (("VAE", not v), ("CLIP text encoder", text_prefix is None)) if gone)
        uf = _unet_facts(u)
        raise CheckpointError(f"a diffusion model without {missing}; not a full checkpoint",
                              detected=_describe(uf), hint="a UNet-only loader is not available yet")
    uf, vf, tf = _unet_facts(u), _vae_facts(v), _text_facts(_strip(state_dict, text_prefix))
    family = _unet_family(uf, tf["hidden_size"])
    if vf["z_channels"] != 4 or vf["embed_dim"] != 4:
        raise CheckpointError(f"VAE with {vf['z_channels']} latent channels (SD1.x has 4)", detected=str(vf))

    unet = shipped_config(family, "unet")
    attn = [d > 0 for d in uf["transformer_depth"]]
    depths = sorted({d for d in uf["transformer_depth"] if d} | {uf["transformer_depth_middle"] or 1})
    unet.update(
        in_channels=uf["in_channels"], out_channels=uf["out_channels"],
        block_out_channels=[uf["model_channels"] * m for m in uf["channel_mult"]],
        layers_per_block=uf["num_res_blocks"][0], cross_attention_dim=uf["context_dim"],
        use_linear_projection=uf["use_linear_in_transformer"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        mid_block_type="UNetMidBlock2DCrossAttn" if uf["transformer_depth_middle"] else "UNetMidBlock2D",
        transformer_layers_per_block=depths[0] if len(depths) == 1 else [max(d, 1) for d in uf["transformer_depth"]],
    )
    vae = shipped_config(family, "vae")
    vae.update(in_channels=vf["in_channels"], out_channels=vf["out_ch"], latent_channels=vf["z_channels"],
               block_out_channels=vf["channels"], layers_per_block=vf["num_res_blocks"],
               down_block_types=["DownEncoderBlock2D"] * len(vf["channels"]),
               up_block_types=["UpDecoderBlock2D"] * len(vf["channels"]))
    text = shipped_config(family, "text_encoder")
    text.update(tf)
    sched = shipped_config(family, "scheduler")
    schedule = {k: sched[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                                      "prediction_type")}
    return FamilyInfo(family, unet, vae, text, text_prefix, vae["scaling_factor"], schedule,
                      {"unet": uf, "vae": vf, "text_encoder": tf})


# ---------------------------------------------------------------- loading


def build_modules(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
                  text_config: Mapping[str, Any]) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The three modules on the meta device: structure without memory, filled by `load_state_dict(assign=True)`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return (UNet2DConditionModel.from_config(dict(unet_config)), AutoencoderKL.from_config(dict(vae_config)),
                CLIPTextModel(CLIPTextConfig.from_dict(dict(text_config))))


def _materialize_buffers(module: torch.nn.Module, device: str | torch.device) -> None:
    """Non-persistent buffers stay on meta after an assign-load; position ids are always 0..n-1 (some
    merged SD1 files carry damaged ones, which ComfyUI ignores too)."""
    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise RuntimeError(f"buffer {name} has no value after loading")
        parent, _, leaf = name.rpartition(".")
        ids = torch.arange(buf.shape[-1], dtype=buf.dtype, device=device).expand(buf.shape)
        module.get_submodule(parent).register_buffer(leaf, ids, persistent=False)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load an SD1.x single-file checkpoint (read once, tensor by tensor, cast to `dtype`).

    Reading starts on a background thread as soon as the family is known, so it overlaps the import of
    diffusers/transformers and the building of the modules. Keys outside the UNet, VAE and text encoder
    (DDPM buffers, EMA copies) are never read.
    """
    path = Path(path)
    with _open(path) as opened:
        try:
            info = detect(opened.meta)
        except CheckpointError as e:
            e.path = str(path)
            raise
        used = (L.UNET_PREFIX, L.VAE_PREFIX, info.text_prefix)
        prefetch = _Prefetch(opened, [k for k in opened.order() if k.startswith(used)], device, dtype)
        try:
            unet, vae, text = build_modules(info.unet_config, info.vae_config, info.text_config)
            templates = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text.state_dict()}
            source: Mapping[str, torch.Tensor] = prefetch
            if info.text_prefix != L.TEXT_PREFIX:
                renamed = {k.replace(info.text_prefix, L.TEXT_PREFIX, 1) if k.startswith(info.text_prefix) else k: k
                           for k in opened.meta}
                source = _Lazy({k: opened.meta[f] for k, f in renamed.items()}, lambda k: prefetch[renamed[k]])
            sds = L.from_ldm(source, templates, info.unet_config, info.vae_config)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"layout detected as {info.family} but the tensors do not fit: {e}",
                                  reason="mismatch", path=path, detected=_describe(info.facts["unet"])) from e
        finally:
            prefetch.close()
    for module, comp in ((unet, "unet"), (vae, "vae"), (text, "text_encoder")):
        module.load_state_dict(sds.pop(comp), strict=True, assign=True)
        _materialize_buffers(module, device)
        module.eval().requires_grad_(False)
    return Checkpoint(info.family, unet, vae, text, info.latent_scale, info.schedule,
                      info.unet_config, info.vae_config, info.text_config, path)


# ---------------------------------------------------------------- deterministic test checkpoints


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
        header[n] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
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


def write_reference_checkpoint(path: str | os.PathLike, layout: str | os.PathLike = REFERENCE_LAYOUT) -> str:
    """Write the full-size SD1.5 reference checkpoint (2.13 GB) and return its content SHA-256, which is
    REFERENCE_SHA256 for the shipped layout. Streams: peak memory is about one tensor (150 MB)."""
    entries = json.loads(Path(layout).read_text())["tensors"]
    return _write_by_rule(path, {n: (s, _ST_DTYPES[d]) for n, s, d in entries}, seed=0)


def tiny_configs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """UNet, VAE and text encoder configs of the tiny CI model (the shipped SD1.5 ones, shrunk)."""
    unet, vae, text = (shipped_config("sd15", p) for p in ("unet", "vae", "text_encoder"))
    unet.update(TINY_UNET)
    vae.update(TINY_VAE)
    text.update(TINY_TEXT, num_attention_heads=clip_heads(TINY_TEXT["hidden_size"]))
    return unet, vae, text


def build_tiny_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny SD1.x checkpoint in the original single-file layout (same rule as the reference file).

    Layout: the tiny configs' modules on the meta device, named by `ldm_layout.to_ldm`, float16 (int64
    position ids), plus the 12 DDPM buffers. `seed` is added to every per-tensor seed (see `tensor_seed`).
    """
    unet_cfg, vae_cfg, text_cfg = tiny_configs()
    unet, vae, text = build_modules(unet_cfg, vae_cfg, text_cfg)
    names = L.to_ldm(unet.state_dict(), vae.state_dict(), text.state_dict(), unet_cfg, vae_cfg)
    layout = {n: (list(t.shape), torch.int64 if n == L.POSITION_IDS else torch.float16) for n, t in names.items()}
    _write_by_rule(path, layout, seed)
    return Path(path)
