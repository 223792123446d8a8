"""Textual-inversion embeddings: A1111 `.pt` files (`string_to_param`), `.safetensors` with `emb_params` or any
single tensor, and SDXL files keyed by text encoder (`clip_l`, `clip_g`). Read only as tensors (pickles with
`weights_only=True`). Which vectors an encoder gets follows ComfyUI: `string_to_param`'s first tensor, else the
encoder's own key, else the file's first tensor; vectors of another width than the encoder's are not used."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .reading import CheckpointError, open_checkpoint

log = logging.getLogger("sumi.embeddings")
SUFFIXES = (".safetensors", ".pt", ".bin")


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """{name: tensor} of an embedding file; `string_to_param.*` entries keep their prefix."""
    if path.suffix.lower() == ".safetensors":
        with open_checkpoint(path) as source:
            return {k: source.read(k) for k in source.order()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or unsafe file
        raise CheckpointError(f"not a readable embedding ({type(e).__name__}: {e})", reason="unreadable",
                              path=path) from e
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, dict) and isinstance(obj.get("string_to_param"), dict):
        out |= {f"string_to_param.{k}": v for k, v in obj["string_to_param"].items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, dict):
        out |= {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return out


def pick(sd: dict[str, torch.Tensor], key: str, width: int) -> torch.Tensor | None:
    """The vectors [n, width] an encoder named `key` (clip_l, clip_g, clip_h) takes from an embedding file."""
    params = [v for k, v in sd.items() if k.startswith("string_to_param.")]
    if params:
        vectors = params[0]
    elif key in sd:
        vectors = sd[key]
    elif sd:
        vectors = next(iter(sd.values()))
    else:
        return None
    vectors = vectors.float()
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.shape[-1] != width:
        log.warning("embedding of width %d does not fit a %d-wide text encoder (%s): ignored", vectors.shape[-1],
                    width, key)
        return None
    return vectors.reshape(-1, width)
