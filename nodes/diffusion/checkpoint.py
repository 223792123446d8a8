"""Loading single-file checkpoints (SD1.x, SD2.x, SDXL base and refiner) into diffusers/transformers modules.

The file is read once, tensor by tensor (`reading.py`), on a background thread (`prefetch.py`) into modules
built on the meta device from the configs `detect.py` derives, so a checkpoint costs one copy of its weights
in the requested dtype. Test checkpoints are written by `fixtures.py`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import ldm_layout as L
from .detect import FamilyInfo, describe, detect, detect_diffusion_model, detect_text_encoder, detect_vae
from .prefetch import Prefetch
from .reading import CheckpointError, Lazy, Source, open_checkpoint

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this package may reach the Hugging Face hub


@dataclass
class Checkpoint:
    """A loaded checkpoint: eval-mode modules with gradients off, and what samplers need to know."""

    info: FamilyInfo
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: dict[str, torch.nn.Module]  # clip_l / clip_h / clip_g, in concatenation order
    path: Path | None = None

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def latent_scale(self) -> float:
        return self.info.latent_scale

    @property
    def schedule(self) -> dict[str, Any]:
        return self.info.schedule

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The first text encoder (SD1.x's only one)."""
        return next(iter(self.text_encoders.values()))


def build_text_encoder(kind: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """A transformers text encoder on the current device: CLIPTextModel, or with a projection for OpenCLIP."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if kind == "openclip" else CLIPTextModel
    return cls(CLIPTextConfig.from_dict(dict(config)))


def build_modules(info: FamilyInfo) -> dict[str, torch.nn.Module]:
    """Every module of a family on the meta device: structure without memory, filled by an assign-load."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        return {"unet": UNet2DConditionModel.from_config(dict(info.unet_config)),
                "vae": AutoencoderKL.from_config(dict(info.vae_config)),
                **{name: build_text_encoder(t.kind, t.config) for name, t in info.text.items()}}


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
    """Load a single-file checkpoint (read once, tensor by tensor, cast to `dtype`).

    Reading starts on a background thread as soon as the family is known, so it overlaps the import of
    diffusers/transformers and the building of the modules. Keys outside the UNet, VAE and text encoders
    (DDPM buffers, EMA copies) are never read.
    """
    path = Path(path)
    with open_checkpoint(path) as opened:
        try:
            info = detect(opened.meta, opened.read)
        except CheckpointError as e:
            e.path = str(path)
            raise
        used = (L.UNET_PREFIX, L.VAE_PREFIX, *(t.prefix for t in info.text.values()))
        prefetch = Prefetch(opened, [k for k in opened.order() if k.startswith(used)], device, dtype)
        try:
            modules = build_modules(info)
            templates = {name: m.state_dict() for name, m in modules.items()}
            sds = L.from_ldm(prefetch, templates, info.specs())
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"layout detected as {info.label} but the tensors do not fit: {e}",
                                  reason="mismatch", path=path, detected=describe(info.facts["unet"])) from e
        finally:
            prefetch.close()
    for name, module in modules.items():
        module.load_state_dict(sds.pop(name), strict=True, assign=True)
        _materialize_buffers(module, device)
        module.eval().requires_grad_(False)
    texts = {name: modules[name] for name in info.text}
    return Checkpoint(info, modules["unet"], modules["vae"], texts, path)


# ---------------------------------------------------------------- split files (UNETLoader, CLIPLoader, VAELoader)


def _renamed(source: Mapping[str, torch.Tensor], have: str, want: str) -> Mapping[str, torch.Tensor]:
    """`source` with the key prefix `have` read as `want` (bare component files read through the LDM names)."""
    if have == want:
        return source
    names = {want + k[len(have):]: k for k in source if k.startswith(have)}
    meta = getattr(source, "meta", source)
    return Lazy({n: meta[k] for n, k in names.items()}, lambda n: source[names[n]])


@dataclass(frozen=True)
class Plan:
    """How to load one component file, as its detector decided: what it is (for errors), how to build the module
    (called on the meta device) and how to turn the file's tensors into that module's state dict."""

    label: str
    build: Callable[[], torch.nn.Module]
    convert: Callable[[Mapping[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    detected: str = ""


def load_component(path: str | os.PathLike, plan: Callable[[Source], tuple[Any, Plan]],
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   storage: torch.dtype | None = None) -> tuple[Any, torch.nn.Module]:
    """(what `plan` detected, the eval-mode module) of a one-component file: open, detect, read every tensor on a
    background thread while the module is built on the meta device, convert, assign. A file that is not what it
    must be raises CheckpointError naming what it appears to be. `storage` rounds every floating-point weight to
    that dtype on the way (fp8 weights; computed in `dtype`)."""
    path = Path(path)
    with open_checkpoint(path) as opened:
        try:
            found, p = plan(opened)
        except CheckpointError as e:
            e.path = str(path)
            raise
        # rounded weights are read in the file's own dtype on the CPU, so each is rounded once (file dtype ->
        # storage) and only the result reaches the device: no full-precision copy of the model on a small card
        prefetch = Prefetch(opened, opened.order(), device if storage is None else "cpu",
                            dtype if storage is None else None)
        source: Mapping[str, torch.Tensor] = prefetch
        if storage is not None:
            source = Lazy(prefetch.meta, lambda n: _rounded(prefetch[n], storage, dtype).to(device))
        try:
            with torch.device("meta"):
                module = p.build()
            state = p.convert(source, module.state_dict())
            module.load_state_dict(state, strict=True, assign=True)
        except torch.OutOfMemoryError:
            raise  # the device is full, the file is fine: the executor frees its cache and says so
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"layout detected as {p.label} but the tensors do not fit: {e}",
                                  reason="mismatch", path=path, detected=p.detected) from e
        finally:
            prefetch.close()
    _materialize_buffers(module, device)
    return found, module.eval().requires_grad_(False)


def _rounded(t: torch.Tensor, storage: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    return t.to(storage).to(dtype) if t.is_floating_point() else t


def _unet_plan(opened: Source) -> tuple[FamilyInfo, Plan]:
    info, prefix = detect_diffusion_model(opened.meta, opened.read)
    from diffusers import UNet2DConditionModel

    cfg = info.unet_config
    return info, Plan(f"an {info.label} UNet", lambda: UNet2DConditionModel.from_config(dict(cfg)),
                      lambda src, tpl: L.from_ldm(_renamed(src, prefix, L.UNET_PREFIX), {"unet": tpl},
                                                  {"unet": ("unet", cfg)})["unet"],
                      describe(info.facts["unet"]))


def _text_plan(opened: Source) -> tuple[str, Plan]:
    name, spec = detect_text_encoder(opened.meta)
    kind = "openclip" if spec.kind == "hf" else spec.kind
    return name, Plan(f"a {name} text encoder", lambda: build_text_encoder(kind, spec.config),
                      lambda src, tpl: L.from_ldm(src, {name: tpl}, {name: (spec.kind, spec.prefix)})[name])


def _vae_plan(opened: Source) -> tuple[dict[str, Any], Plan]:
    config, prefix = detect_vae(opened.meta)
    from diffusers import AutoencoderKL

    return config, Plan("a VAE", lambda: AutoencoderKL.from_config(config),
                        lambda src, tpl: L.from_ldm(_renamed(src, prefix, L.VAE_PREFIX), {"vae": tpl},
                                                    {"vae": ("vae", config)})["vae"])


def load_diffusion_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32,
                         storage: torch.dtype | None = None) -> tuple[FamilyInfo, torch.nn.Module]:
    """A diffusion-model-only file (UNETLoader): (family info, the UNet); `storage` rounds the weights (fp8)."""
    return load_component(path, _unet_plan, device, dtype, storage)


def load_text_encoder(path: str | os.PathLike, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[str, torch.nn.Module]:
    """A text-encoder file (CLIPLoader, DualCLIPLoader): (clip_l / clip_h / clip_g, the module)."""
    return load_component(path, _text_plan, device, dtype)


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A VAE file (VAELoader) in the original layout, bare or under `first_stage_model.`."""
    return load_component(path, _vae_plan, device, dtype)[1]
