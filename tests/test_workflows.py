"""Every example workflow in workflows/ for the model families and samplers beyond SD1.x txt2img runs on Sumi's
tiny models (built on first use, like the default one) and saves a real image: SD2 with forced v-prediction,
SDXL base → refiner (CLIPTextEncodeSDXL / ...Refiner, KSamplerAdvanced hand-over), SDXL-Turbo style custom
sampling, area composition, a kohya LoRA, a ControlNet on Canny edges, an inpainting model, an ESRGAN ×4 upscale
a hires fix through the upscale model, and split files (UNETLoader, DualCLIPLoader, VAELoader) with an embedding."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from executor.runner import Executor
from nodes import build_registry, models, paths

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    saved = paths.FOLDERS
    paths.configure(tmp_path_factory.mktemp("workflows"))
    yield Executor(build_registry())
    paths.FOLDERS = saved


@pytest.mark.parametrize(("workflow", "size", "families"), [
    ("sd2_txt2img", (256, 256), {"4": "sd2"}),
    ("sdxl_base_refiner", (256, 256), {"4": "sdxl", "12": "sdxl_refiner"}),
    ("sdxl_turbo", (256, 256), {"4": "sdxl"}),
    ("area_composition", (256, 384), {"4": "sd15"}),
    ("lora", (256, 256), {"4": "sd15", "10": "sd15"}),
    ("controlnet_canny", (256, 256), {"4": "sd15", "11": "sd15"}),
    ("inpaint", (256, 256), {"4": "sd15"}),
])
def test_example_workflow_runs_on_the_tiny_models(ex: Executor, workflow: str, size: tuple[int, int],
                                                   families: dict[str, str]) -> None:
    prompt = json.loads((REPO / "workflows" / f"{workflow}.json").read_text())
    paths.ensure_example_inputs()
    result = ex.run(prompt)
    assert result.status == "success", result.error
    for node, family in families.items():
        assert result.values[node][0].family == family
    (saved,) = result.outputs["9"]["images"]
    image = np.asarray(Image.open(paths.FOLDERS.output / saved["subfolder"] / saved["filename"]))
    assert image.shape == (*size, 3) and image.std() > 1.0  # a real picture, not a constant
    if workflow == "inpaint":  # only the transparent hole (grown by 6 px) is repainted
        from nodes.diffusion.sample import prepare_mask

        out, given = result.values["3"][0]["samples"], result.values["11"][0]["samples"]
        kept = prepare_mask(result.values["11"][0]["noise_mask"], out.shape, out.device) == 0
        assert kept.any() and (~kept).any() and torch.equal(out[kept], given[kept])  # outside: the input, exactly
        assert not torch.allclose(out[~kept], given[~kept])  # inside: repainted (the tiny VAE's pixels mean nothing)
    built = {p.name for p in (paths.FOLDERS.base / "models" / "checkpoints").iterdir()}
    loaders = [n for n in families if "ckpt_name" in prompt[n]["inputs"]]
    assert {prompt[n]["inputs"]["ckpt_name"] for n in loaders} <= built <= set(models.TINY_CHECKPOINTS)


def test_refiner_hand_over_is_deterministic_and_cached(ex: Executor) -> None:
    prompt = json.loads((REPO / "workflows" / "sdxl_base_refiner.json").read_text())
    first = ex.run(prompt)
    again = ex.run(prompt)
    assert {"4", "12", "10", "11"} <= set(again.cached) and not again.ran
    prompt["11"]["inputs"]["noise_seed"] = 7  # add_noise disabled: the refiner's seed changes nothing
    third = ex.run(prompt)
    assert "11" in third.ran and "10" in third.cached
    assert (third.values["11"][0]["samples"] == first.values["11"][0]["samples"]).all()


@pytest.mark.parametrize(("workflow", "size"), [("upscale_esrgan", (1024, 1024)),
                                              ("hires_fix_model_upscale", (256, 256))])
def test_model_upscale_workflows_run_on_the_tiny_models(ex: Executor, workflow: str, size: tuple[int, int]) -> None:
    from nodes.models import TINY_UPSCALE_MODELS

    prompt = json.loads((REPO / "workflows" / f"{workflow}.json").read_text())
    paths.ensure_example_inputs()
    result = ex.run(prompt)
    assert result.status == "success", result.error
    (loader,) = [n for n in prompt if prompt[n]["class_type"] == "UpscaleModelLoader"]
    (upscaled,) = [n for n in prompt if prompt[n]["class_type"] == "ImageUpscaleWithModel"]
    model = result.values[loader][0]
    assert (model.architecture, model.scale) == ("ESRGAN", 4)
    source = result.values[prompt[upscaled]["inputs"]["image"][0]][0]
    out = result.values[upscaled][0]
    assert out.shape == (1, source.shape[1] * 4, source.shape[2] * 4, 3)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 0.01
    (saved,) = result.outputs["9"]["images"]
    image = np.asarray(Image.open(paths.FOLDERS.output / saved["subfolder"] / saved["filename"]))
    assert image.shape == (*size, 3) and image.std() > 1.0  # a real picture, not a constant
    if workflow == "upscale_esrgan":  # the saved PNG is the upscaled image itself
        assert np.array_equal(image, (out[0].numpy() * 255).clip(0, 255).astype(np.uint8))
    else:  # 128 px → ×4 → ×0.5 → encoded at 256 px for the second pass
        assert result.values["16"][0].shape == (1, 256, 256, 3)
        assert result.values["17"][0]["samples"].shape == (1, 4, 32, 32)
    built = {p.name for p in (paths.FOLDERS.base / "models" / "upscale_models").iterdir()}
    assert built == set(TINY_UPSCALE_MODELS)


def test_split_files_workflow_equals_the_single_file_and_uses_the_tiny_embedding(
        ex: Executor, caplog: pytest.LogCaptureFixture) -> None:
    """UNETLoader + DualCLIPLoader + VAELoader on the embedded tiny split files (built on first use into their
    folders) give exactly the image of the tiny SDXL single file; the tiny embedding in the prompt is used."""
    prompt = json.loads((REPO / "workflows" / "split_files_sdxl.json").read_text())
    with caplog.at_level("WARNING", logger="sumi.prompt"):
        split = ex.run(prompt)
    assert split.status == "success", split.error
    assert not [r for r in caplog.records if "embedding" in r.getMessage()]  # found, for both encoders
    models_dir = paths.FOLDERS.base / "models"
    for folder, node, field in (("diffusion_models", "1", "unet_name"), ("text_encoders", "2", "clip_name1"),
                                ("text_encoders", "2", "clip_name2"), ("vae", "4", "vae_name")):
        assert (models_dir / folder / prompt[node]["inputs"][field]).is_file()
    assert (models_dir / "embeddings" / "sumi_tiny_sdxl_embedding.safetensors").is_file()
    assert not [p for p in models_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(".sumi-split-")]

    single = {k: v for k, v in prompt.items() if k not in ("1", "2", "4")}
    single["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sumi_tiny_sdxl.safetensors"}}
    for node, inputs in (("3", {"model": ["10", 0]}), ("6", {"clip": ["10", 1]}), ("7", {"clip": ["10", 1]}),
                         ("8", {"vae": ["10", 2]})):
        single[node] = {**single[node], "inputs": {**single[node]["inputs"], **inputs}}
    whole = ex.run(single)
    assert whole.status == "success", whole.error
    assert torch.equal(split.values["3"][0]["samples"], whole.values["3"][0]["samples"])
    assert torch.equal(split.values["8"][0], whole.values["8"][0])

    missing = json.loads(json.dumps(prompt))  # the contrast: a name with no file is read as text, with a warning
    missing["6"]["inputs"]["text"] = missing["6"]["inputs"]["text"].replace("sumi_tiny_sdxl_embedding", "sumi_none")
    with caplog.at_level("WARNING", logger="sumi.prompt"):
        assert ex.run(missing).status == "success"
    assert any("embedding 'sumi_none," in r.getMessage() for r in caplog.records)

    # the vectors themselves reach the encoders: another file of the same shapes gives other conditioning
    from safetensors.torch import load_file, save_file

    tiny = load_file(str(models_dir / "embeddings" / "sumi_tiny_sdxl_embedding.safetensors"))
    assert sorted(tiny) == ["clip_g", "clip_l"] and all(t.shape[0] == 2 for t in tiny.values())
    zero_file = models_dir / "embeddings" / "sumi_zero.safetensors"
    save_file({k: torch.zeros_like(t) for k, t in tiny.items()}, str(zero_file))
    other = json.loads(json.dumps(prompt))
    other["6"]["inputs"]["text"] = other["6"]["inputs"]["text"].replace("sumi_tiny_sdxl_embedding", "sumi_zero")
    zeroed = ex.run(other)
    assert zeroed.status == "success", zeroed.error
    cond, cond_zero = split.values["6"][0][0][0], zeroed.values["6"][0][0][0]
    assert cond.shape == cond_zero.shape and not torch.allclose(cond, cond_zero)
