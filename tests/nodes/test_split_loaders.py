"""Split files (UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader): a checkpoint split into its diffusion model,
text encoders (transformers layout) and VAE gives exactly the image the single file gives, for SD1.x, SD2.x and
SDXL; the loaders detect the family from each file alone; a file of another kind or an unsupported type or dtype
is a validation error on that input, naming what the file appears to be."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from executor.errors import ValidationFailed
from executor.runner import Executor
from nodes import build_registry, models, paths
from nodes.diffusion import fixtures as F

NAMES = {"sd15": "sumi_tiny_sd15.safetensors", "sd2": "sumi_tiny_sd2.safetensors", "sdxl": "sumi_tiny_sdxl.safetensors"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp("split")
    paths.configure(root)
    for family, name in NAMES.items():
        ckpt = models.ensure_default_checkpoint(name)
        files = F.write_split_files(ckpt, root / "split", bare=family != "sd2")  # both unet layouts
        for comp, folder in (("unet", "diffusion_models"), ("vae", "vae")):
            (root / "models" / folder).mkdir(parents=True, exist_ok=True)
            files[comp].rename(root / "models" / folder / files[comp].name)
        (root / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
        for comp in ("clip_l", "clip_h", "clip_g"):
            if comp in files:
                files[comp].rename(root / "models" / "text_encoders" / files[comp].name)
    yield root
    paths.FOLDERS = saved


def _graph(model: list, clip: list, vae: list, loaders: dict) -> dict:
    return {**loaders,
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": clip}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                       "scheduler": "normal", "denoise": 1.0, "model": model,
                                                       "positive": ["6", 0], "negative": ["7", 0],
                                                       "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": vae}},
            "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}


@pytest.mark.parametrize("family", list(NAMES))
def test_split_files_give_the_single_files_image(base: Path, family: str) -> None:
    stem = Path(NAMES[family]).stem
    whole = _graph(["1", 0], ["1", 1], ["1", 2],
                   {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES[family]}}})
    if family == "sdxl":
        clip = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": f"{stem}_clip_l.safetensors",
                                                           "clip_name2": f"{stem}_clip_g.safetensors", "type": "sdxl"}}
    else:
        enc = "clip_l" if family == "sd15" else "clip_h"
        clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": f"{stem}_{enc}.safetensors",
                                                       "type": "stable_diffusion"}}
    split = _graph(["11", 0], ["12", 0], ["13", 0], {
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": f"{stem}_unet.safetensors",
                                                      "weight_dtype": "default"}},
        "12": clip, "13": {"class_type": "VAELoader", "inputs": {"vae_name": f"{stem}_vae.safetensors"}}})
    ex = Executor(build_registry())
    a, b = ex.run(whole), ex.run(split)
    assert a.status == b.status == "success", (a.error, b.error)
    assert b.values["11"][0].family == family and b.values["12"][0].family == family
    assert torch.equal(a.values["3"][0]["samples"], b.values["3"][0]["samples"])
    assert torch.equal(a.values["8"][0], b.values["8"][0])


def test_wrong_files_types_and_dtypes_are_validation_errors(base: Path) -> None:
    stem = Path(NAMES["sdxl"]).stem
    (base / "models" / "diffusion_models" / "a_vae.safetensors").write_bytes(
        (base / "models" / "vae" / f"{stem}_vae.safetensors").read_bytes())
    prompt = _graph(["11", 0], ["12", 0], ["13", 0], {
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": "a_vae.safetensors", "weight_dtype": "fp8_e5m2"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": f"{stem}_clip_g.safetensors", "type": "sd3"}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": f"{stem}_vae.safetensors"}}})
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    by = {(e.node_id, e.input_name): e.message for e in info.value.errors}
    assert "not supported" in by[("11", "weight_dtype")] and "sd3" in by[("12", "type")]
    prompt["11"]["inputs"]["weight_dtype"] = "default"
    prompt["12"]["inputs"]["type"] = "stable_diffusion"
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    by = {(e.node_id, e.input_name): e.message for e in info.value.errors}
    assert "no UNet in the original layout" in by[("11", "unet_name")]
    result = Executor(build_registry()).run({**prompt, "11": {"class_type": "UNETLoader", "inputs": {
        "unet_name": f"{stem}_unet.safetensors", "weight_dtype": "default"}}})
    # the bigG file read as an SD2 encoder: the sampler refuses conditioning of the wrong width, saying why
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "does not fit this sdxl model" in result.error["exception_message"]
