"""Parity with ComfyUI for the tool nodes (`reference-next/`, copied from the shared parity-next set): masked
img2img with SetLatentNoiseMask, and VAEEncodeForInpaint's grey-filled encoding and grown noise mask, on the
SD1.5 reference checkpoint (built by Sumi's generator, content hash checked). Tolerances as in the SD1.5 suite.
Set SUMI_SKIP_SLOW=1 to skip (the skip says so).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

REF = Path(__file__).parent / "reference-next"
CASES = json.loads((REF / "manifest.json").read_text())

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("SUMI_SKIP_SLOW") == "1",
                                                     reason="SUMI_SKIP_SLOW=1: parity with ComfyUI not checked")]


def cache_dir() -> Path:
    return Path(os.environ.get("SUMI_CACHE_DIR") or Path.home() / ".cache" / "sumi")


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from executor.runner import Executor
    from nodes import build_registry, devices, paths
    from nodes.diffusion.fixtures import write_reference_checkpoint

    ckpt = cache_dir() / "reference_sd15.safetensors"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".partial")
        assert write_reference_checkpoint(tmp, Path(__file__).parent / "reference" / "sd15_layout.json") == \
            "dd2116b6aa05a4289800031c66d179dd75bd8ed8da8540c0fc80d3bb4d9f355c"  # the SD1.5 reference README
        tmp.replace(ckpt)
    base = tmp_path_factory.mktemp("parity_next")
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / "reference_sd15.safetensors").symlink_to(ckpt)
    shutil.copytree(REF / "inputs", base / "input")
    saved = paths.FOLDERS
    paths.configure(base)
    devices.configure("cpu", "fp32", threads=1)
    yield Executor(build_registry())
    paths.FOLDERS = saved


def test_set_latent_noise_mask_matches_comfyui(executor: Any) -> None:
    from nodes import paths

    name = "setlatentnoisemask_sd15_euler_normal_d080"
    case = CASES[name]
    result = executor.run(json.loads((REF / case["workflow"]).read_text()))
    assert result.status == "success", (result.error or {}).get("traceback")
    ref = load_file(str(REF / f"{name}.latent.safetensors"))
    node, slot = case["latent_from"]
    latent = result.values[node][slot]["samples"].cpu()
    bound = 2e-5 * float(ref["samples"].abs().max())
    assert latent.shape == ref["samples"].shape
    assert float((latent - ref["samples"]).abs().max()) <= bound
    mask_node, mask_slot = case["extra_from"]["mask"]
    assert float((result.values[mask_node][mask_slot].cpu() - ref["mask"]).abs().max()) == 0.0
    encoded = result.values["11"][0]["samples"].cpu()
    assert float((encoded - ref["vae_encoded"]).abs().max()) <= 10 * bound
    # Where the mask, resized to the latent, is 0 the sampler hands back the encoded latent (ComfyUI: to 6e-8).
    noise_mask = result.values["21"][0]["noise_mask"].cpu()
    assert noise_mask.shape == (1, 1, 64, 64)
    untouched = torch.nn.functional.interpolate(noise_mask, size=(8, 8), mode="bilinear")[0, 0] == 0
    assert 0 < int(untouched.sum()) < 64
    assert float((latent - encoded)[..., untouched].abs().max()) <= 1e-5
    assert float((latent - encoded)[..., ~untouched].abs().max()) > 1.0

    node, slot = case["image_from"]
    image = result.values[node][slot].cpu()
    ref_image = load_file(str(REF / f"{name}.image.safetensors"))["images"]
    assert float((image - ref_image).abs().max()) <= 1e-4
    [entry] = result.outputs["7"]["images"]
    mine = np.asarray(Image.open(paths.FOLDERS.output / entry["subfolder"] / entry["filename"]))
    theirs = np.asarray(Image.open(REF / f"{name}.png"))
    diff = np.abs(mine.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001


def test_vae_encode_for_inpaint_matches_comfyui(executor: Any) -> None:
    ref = load_file(str(REF / "inpaint_vaeencode_sd15inpaint_euler_normal.latent.safetensors"))
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "reference_sd15.safetensors"}},
              "10": {"class_type": "LoadImage", "inputs": {"image": "inpaint_rgba.png"}},
              "21": {"class_type": "VAEEncodeForInpaint",
                     "inputs": {"pixels": ["10", 0], "vae": ["1", 2], "mask": ["10", 1], "grow_mask_by": 6}},
              "8": {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": "inpaint"}}}
    result = executor.run(prompt)
    assert result.status == "success", (result.error or {}).get("traceback")
    out = result.values["21"][0]
    assert out["noise_mask"].shape == ref["input_noise_mask"].shape
    assert float((out["noise_mask"].cpu() - ref["input_noise_mask"]).abs().max()) == 0.0
    samples = out["samples"].cpu()
    assert samples.shape == ref["input_samples"].shape
    # The VAE-encode tolerance of the SD1.5 suite (10 × 2e-5 × max|ref|, relative to that case's latent).
    assert float((samples - ref["input_samples"]).abs().max()) <= 10 * 2e-5 * float(ref["samples"].abs().max())
