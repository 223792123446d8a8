"""Sumi's nodes on the tiny SD1.x checkpoint, run through the real Executor with API-format prompts.

Proves: txt2img tensor shapes, value ranges and seed reproducibility; img2img at denoise 0 and VAEEncode's
centre crop to a multiple of 8; that a seed sweep loads and encodes once and a prompt edit re-runs only its own
encoder and what is downstream; KSamplerAdvanced's start/end steps, add_noise and leftover-noise semantics;
LatentUpscale/LatentUpscaleBy sizes, crop and methods (bislerp keeps channel norms); SaveImage naming,
counters, subfolders, refusal of escaping prefixes and the PNG `prompt`/`workflow` chunks; PreviewImage's temp
files; the SaveLatent → LoadLatent round trip; LoadImage masks and its content fingerprint; validation errors
on real nodes; CLIPSetLastLayer. Every test works in its own temporary base directory.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from executor.errors import ValidationFailed
from executor.runner import Event, Executor, RunResult
from nodes import build_registry, models
from nodes.diffusion.sample import SAMPLER_NAMES
from nodes.latent import UPSCALE_METHODS

CKPT = models.DEFAULT_CHECKPOINT


# ---------------------------------------------------------------- fixtures and graph helpers


@pytest.fixture
def base(tiny_base: Path) -> Path:
    return tiny_base  # tests/conftest.py: a fresh base per test with the tiny checkpoint


@pytest.fixture
def ex(base: Path) -> Executor:
    return Executor(build_registry())


def run(ex: Executor, prompt: dict[str, Any], ok: bool = True, **kwargs: Any) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    result = ex.run(prompt, on_event=events.append, **kwargs)
    if ok:
        assert result.status == "success", result.error
    return result, events


def executing(events: list[Event]) -> list[str]:
    return [e.data["node"] for e in events if e.type == "executing" and e.data["node"] is not None]


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def model_nodes(text: str = "a lighthouse at dawn", negative: str = "blurry") -> dict[str, Any]:
    return {"4": node("CheckpointLoaderSimple", ckpt_name=CKPT),
            "6": node("CLIPTextEncode", text=text, clip=["4", 1]),
            "7": node("CLIPTextEncode", text=negative, clip=["4", 1])}


def sampler(latent: list[Any], seed: int = 1, steps: int = 2, denoise: float = 1.0, positive: str = "6",
            sampler_name: str = "euler") -> dict[str, Any]:
    return node("KSampler", model=["4", 0], seed=seed, steps=steps, cfg=7.0, sampler_name=sampler_name,
                scheduler="normal", positive=[positive, 0], negative=["7", 0], latent_image=latent, denoise=denoise)


def txt2img(seed: int = 1, steps: int = 2, width: int = 64, height: int = 64, batch: int = 1,
            text: str = "a lighthouse at dawn", prefix: str = "t") -> dict[str, Any]:
    return {**model_nodes(text),
            "5": node("EmptyLatentImage", width=width, height=height, batch_size=batch),
            "3": sampler(["5", 0], seed=seed, steps=steps),
            "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
            "9": node("SaveImage", images=["8", 0], filename_prefix=prefix)}


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def write_latent(path: Path, samples: torch.Tensor, version_key: bool = True) -> None:
    tensors = {"latent_tensor": samples.contiguous()}
    if version_key:
        tensors["latent_format_version_0"] = torch.tensor([])
    save_file(tensors, str(path))


def random_latent(base: Path, shape: tuple[int, ...], seed: int = 0, name: str = "in.latent") -> torch.Tensor:
    samples = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    write_latent(base / "input" / name, samples)
    return samples


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return np.clip(255.0 * images.numpy(), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- txt2img


def test_txt2img_shapes_ranges_and_batch_files(base: Path, ex: Executor) -> None:
    result, _ = run(ex, txt2img(width=64, height=48, batch=2, prefix="t"))
    assert result.values["5"][0]["samples"].shape == (2, 4, 6, 8)
    assert not result.values["5"][0]["samples"].any()
    latent = result.values["3"][0]["samples"]
    assert latent.shape == (2, 4, 6, 8) and latent.dtype == torch.float32
    assert torch.isfinite(latent).all() and latent.abs().max() > 0
    image = result.values["8"][0]
    assert image.shape == (2, 48, 64, 3) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0
    assert result.outputs["9"] == {"images": [{"filename": "t_00001_.png", "subfolder": "", "type": "output"},
                                              {"filename": "t_00002_.png", "subfolder": "", "type": "output"}]}
    assert sorted(os.listdir(base / "output")) == ["t_00001_.png", "t_00002_.png"]
    for index, name in enumerate(["t_00001_.png", "t_00002_.png"]):
        with Image.open(base / "output" / name) as png:
            assert png.size == (64, 48) and png.mode == "RGB"
            # ComfyUI's conversion: 255·x clipped and truncated.
            assert np.array_equal(np.asarray(png), to_uint8(image[index]))


def test_same_seed_is_bitwise_identical_across_executors_and_other_seeds_differ(base: Path) -> None:
    first, _ = run(Executor(build_registry()), txt2img(seed=5, prefix="a"))
    second_ex = Executor(build_registry())
    second, _ = run(second_ex, txt2img(seed=5, prefix="a"))
    assert set(second.ran) == set(first.ran)  # nothing shared: the second executor computed everything itself
    assert torch.equal(first.values["8"][0], second.values["8"][0])
    assert torch.equal(first.values["3"][0]["samples"], second.values["3"][0]["samples"])
    assert (base / "output" / "a_00001_.png").read_bytes() == (base / "output" / "a_00002_.png").read_bytes()
    other, _ = run(second_ex, txt2img(seed=6, prefix="a"))
    assert (other.values["8"][0] - first.values["8"][0]).abs().max() > 1e-3


# ---------------------------------------------------------------- img2img and VAEEncode


def test_img2img_at_denoise_zero_returns_the_encoded_latent(base: Path, ex: Executor) -> None:
    write_image(base / "input" / "photo.png", 70, 45)
    prompt = {**model_nodes(),
              "10": node("LoadImage", image="photo.png"),
              "11": node("VAEEncode", pixels=["10", 0], vae=["4", 2]),
              "3": sampler(["11", 0], steps=4, denoise=0.0),
              "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
              "9": node("SaveImage", images=["8", 0], filename_prefix="i2i")}
    result, _ = run(ex, prompt)
    encoded = result.values["11"][0]["samples"]
    assert encoded.shape == (1, 4, 5, 8)
    assert torch.equal(result.values["3"][0]["samples"], encoded)
    assert result.values["8"][0].shape == (1, 40, 64, 3)


def test_vae_encode_centre_crops_to_a_multiple_of_8(base: Path, ex: Executor) -> None:
    pixels = write_image(base / "input" / "photo.png", 70, 45)  # 70 % 8 = 6 → left 3; 45 % 8 = 5 → top 2
    Image.fromarray(pixels[2:42, 3:67]).save(base / "input" / "centre.png")
    Image.fromarray(pixels[0:40, 0:64]).save(base / "input" / "corner.png")
    prompt = {"4": node("CheckpointLoaderSimple", ckpt_name=CKPT)}
    for nid, name in (("10", "photo.png"), ("20", "centre.png"), ("30", "corner.png")):
        prompt[nid] = node("LoadImage", image=name)
        prompt[str(int(nid) + 1)] = node("VAEEncode", pixels=[nid, 0], vae=["4", 2])
        prompt[str(int(nid) + 2)] = node("SaveLatent", samples=[str(int(nid) + 1), 0], filename_prefix=nid)
    result, _ = run(ex, prompt)
    cropped, centre, corner = (result.values[n][0]["samples"] for n in ("11", "21", "31"))
    assert cropped.shape == centre.shape == (1, 4, 5, 8)
    torch.testing.assert_close(cropped, centre, rtol=0, atol=1e-6)
    assert (cropped - corner).abs().max() > 1e-3


# ---------------------------------------------------------------- caching across a sweep


def test_seed_sweep_loads_and_encodes_once_and_a_prompt_edit_reruns_only_its_branch(base: Path,
                                                                                  ex: Executor) -> None:
    everything = {"4", "5", "6", "7", "3", "8", "9"}
    counts: Counter[str] = Counter()
    images = []
    for index, seed in enumerate((1, 2, 3)):
        result, events = run(ex, txt2img(seed=seed))
        counts.update(executing(events))
        images.append(result.values["8"][0])
        cached_event = next(e for e in events if e.type == "execution_cached")
        assert cached_event.data["nodes"] == result.cached
        if index == 0:
            assert set(result.ran) == everything and result.cached == []
        else:
            assert set(result.ran) == {"3", "8", "9"}
            assert set(result.cached) == {"4", "5", "6", "7"}
    assert counts == {"4": 1, "5": 1, "6": 1, "7": 1, "3": 3, "8": 3, "9": 3}
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    assert len(os.listdir(base / "output")) == 3

    edited, events = run(ex, txt2img(seed=3, text="a red barn"))
    assert set(edited.ran) == {"6", "3", "8", "9"}
    assert set(edited.cached) == {"4", "5", "7"}
    reasons = {e.data["node"]: e.data["reason"] for e in events if e.type == "executing" and e.data["node"]}
    assert reasons["6"] == "inputs changed: text"

    again, _ = run(ex, txt2img(seed=1))  # going back to an earlier prompt is a cache hit, output node included
    assert again.ran == []
    assert again.outputs["9"]["images"][0]["filename"] == "t_00001_.png"
    assert len(os.listdir(base / "output")) == 4


# ---------------------------------------------------------------- KSamplerAdvanced


def advanced(latent: str = "20", **settings: Any) -> dict[str, Any]:
    inputs = {"model": ["4", 0], "add_noise": "enable", "noise_seed": 1, "steps": 4, "cfg": 7.0,
              "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
              "latent_image": [latent, 0], "start_at_step": 0, "end_at_step": 10000,
              "return_with_leftover_noise": "disable"}
    return node("KSamplerAdvanced", **{**inputs, **settings})


def run_advanced(ex: Executor, samplers: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Run the given KSamplerAdvanced nodes (ids ≥ 30) on a LoadLatent (id 20); returns their samples."""
    prompt = {**model_nodes(), "20": node("LoadLatent", latent="in.latent"), **samplers}
    for nid in samplers:
        prompt["1" + nid] = node("SaveLatent", samples=[nid, 0], filename_prefix=f"adv{nid}")
    result, _ = run(ex, prompt)
    return {nid: result.values[nid][0]["samples"] for nid in samplers}


def test_ksampler_advanced_start_at_or_past_steps_returns_the_input(base: Path, ex: Executor) -> None:
    latent = random_latent(base, (1, 4, 8, 8))
    out = run_advanced(ex, {"30": advanced(steps=3, start_at_step=3), "31": advanced(steps=3, start_at_step=7),
                            "32": advanced(steps=3, start_at_step=2)})
    assert torch.equal(out["30"], latent)
    assert torch.equal(out["31"], latent)
    assert (out["32"] - latent).abs().max() > 1e-3  # one step left: it does sample


def test_ksampler_advanced_add_noise_disable_ignores_the_seed(base: Path, ex: Executor) -> None:
    random_latent(base, (1, 4, 8, 8))
    out = run_advanced(ex, {"30": advanced(add_noise="disable", noise_seed=1),
                            "31": advanced(add_noise="disable", noise_seed=2),
                            "32": advanced(add_noise="enable", noise_seed=1),
                            "33": advanced(add_noise="enable", noise_seed=2)})
    assert torch.equal(out["30"], out["31"])
    assert (out["32"] - out["33"]).abs().max() > 1e-2
    assert (out["30"] - out["32"]).abs().max() > 1e-2


def test_ksampler_advanced_leftover_noise_continues_into_a_second_pass(base: Path, ex: Executor) -> None:
    """The base/refiner split: steps 0–2 with leftover noise, then 2–4 without adding noise, equals 0–4.

    (The tiny checkpoint's weights are random, so its "denoised" estimate is no less noisy than its input and
    the std of a fully denoised latent is not smaller; the split is the model-independent form of the rule.)
    """
    random_latent(base, (1, 4, 8, 8))
    out = run_advanced(ex, {
        "30": advanced(end_at_step=2, return_with_leftover_noise="enable"),
        "31": advanced(end_at_step=2, return_with_leftover_noise="disable"),
        "32": advanced(),
        "33": advanced("30", add_noise="disable", start_at_step=2),
        "34": advanced("31", add_noise="disable", start_at_step=2),
        "35": advanced(return_with_leftover_noise="enable"),
    })
    full = out["32"]
    tolerance = 1e-5 * float(full.abs().max())
    torch.testing.assert_close(out["33"], full, rtol=0, atol=tolerance)
    assert (out["34"] - full).abs().max() > 1000 * tolerance  # a fully denoised first pass does not continue
    assert (out["30"] - out["31"]).abs().max() > 1000 * tolerance
    assert torch.equal(out["35"], full)  # with end_at_step ≥ steps there is no leftover noise to keep


# ---------------------------------------------------------------- latent upscaling


UPSCALE_SIZES = [
    # (node, extra inputs, expected latent H, W) for an input latent of 8×12 (64×96 pixels)
    ("LatentUpscale", {"width": 128, "height": 96}, (12, 16)),
    ("LatentUpscale", {"width": 0, "height": 128}, (16, 24)),  # 0 keeps the aspect ratio
    ("LatentUpscale", {"width": 192, "height": 0}, (16, 24)),
    ("LatentUpscale", {"width": 0, "height": 0}, (8, 12)),  # both 0: unchanged
    ("LatentUpscale", {"width": 32, "height": 128}, (16, 8)),  # ComfyUI raises each side to at least 64 px
    ("LatentUpscale", {"width": 0, "height": 16}, (8, 12)),
    ("LatentUpscaleBy", {"scale_by": 1.5}, (12, 18)),
    ("LatentUpscaleBy", {"scale_by": 0.5}, (4, 6)),
]


def upscale_prompt(nodes_: dict[str, dict[str, Any]]) -> dict[str, Any]:
    prompt = {"20": node("LoadLatent", latent="in.latent"), **nodes_}
    for nid in nodes_:
        prompt["1" + nid] = node("SaveLatent", samples=[nid, 0], filename_prefix=f"up{nid}")
    return prompt


def upscaler(class_type: str, method: str = "nearest-exact", **inputs: Any) -> dict[str, Any]:
    if class_type == "LatentUpscale":
        inputs.setdefault("crop", "disabled")
    return node(class_type, samples=["20", 0], upscale_method=method, **inputs)


@pytest.mark.parametrize(("class_type", "inputs", "size"), UPSCALE_SIZES)
def test_latent_upscale_sizes(base: Path, ex: Executor, class_type: str, inputs: dict[str, Any],
                              size: tuple[int, int]) -> None:
    latent = random_latent(base, (2, 4, 8, 12))
    result, _ = run(ex, upscale_prompt({"30": upscaler(class_type, **inputs)}))
    out = result.values["30"][0]["samples"]
    assert out.shape == (2, 4, *size)
    if size == (8, 12):
        assert torch.equal(out, latent)


def test_latent_upscale_centre_crop(base: Path, ex: Executor) -> None:
    latent = random_latent(base, (1, 4, 8, 12))
    result, _ = run(ex, upscale_prompt({
        "30": upscaler("LatentUpscale", width=64, height=64, crop="center"),  # narrower: crop 2 columns a side
        "31": upscaler("LatentUpscale", width=192, height=64, crop="center"),  # wider: crop 2 rows a side
        "32": upscaler("LatentUpscale", width=64, height=64, crop="disabled"),
    }))
    out = {nid: result.values[nid][0]["samples"] for nid in ("30", "31", "32")}
    assert torch.equal(out["30"], latent[..., :, 2:10])
    assert torch.equal(out["31"], latent[..., 2:6, :].repeat_interleave(2, -2).repeat_interleave(2, -1))
    assert out["32"].shape == (1, 4, 8, 8) and not torch.equal(out["32"], out["30"])


@pytest.mark.parametrize("class_type", ["LatentUpscale", "LatentUpscaleBy"])
def test_every_upscale_method_runs_keeps_constants_and_differs(base: Path, ex: Executor, class_type: str) -> None:
    size = {"width": 144, "height": 96} if class_type == "LatentUpscale" else {"scale_by": 1.5}
    random_latent(base, (1, 4, 8, 12))
    constant = torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1).expand(1, 4, 8, 12)
    write_latent(base / "input" / "constant.latent", constant)
    nodes_ = {str(30 + i): upscaler(class_type, method, **size) for i, method in enumerate(UPSCALE_METHODS)}
    result, _ = run(ex, upscale_prompt(nodes_))
    outs = [result.values[nid][0]["samples"] for nid in nodes_]
    for out in outs:
        assert out.shape == (1, 4, 12, 18) and torch.isfinite(out).all()
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.equal(outs[i], outs[j]), (UPSCALE_METHODS[i], UPSCALE_METHODS[j])
    prompt = upscale_prompt(nodes_)
    prompt["20"]["inputs"]["latent"] = "constant.latent"
    result, _ = run(ex, prompt)
    for method, nid in zip(UPSCALE_METHODS, nodes_, strict=True):
        out = result.values[nid][0]["samples"]
        torch.testing.assert_close(out, constant[..., :1, :1].expand_as(out), rtol=0, atol=1e-5, msg=method)


def test_bislerp_preserves_channel_norms(base: Path, ex: Executor) -> None:
    latent = torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(3))
    latent = 2.5 * latent / latent.norm(dim=1, keepdim=True)
    write_latent(base / "input" / "in.latent", latent)
    result, _ = run(ex, upscale_prompt({"30": upscaler("LatentUpscaleBy", "bislerp", scale_by=2.0),
                                        "31": upscaler("LatentUpscaleBy", "bilinear", scale_by=2.0)}))
    bislerp, bilinear = result.values["30"][0]["samples"], result.values["31"][0]["samples"]
    assert bislerp.shape == (1, 4, 12, 12)
    assert (bislerp.norm(dim=1) - 2.5).abs().max() < 1e-4
    assert (bilinear.norm(dim=1) - 2.5).abs().max() > 1e-2  # the property is bislerp's, not any resampler's


# ---------------------------------------------------------------- SaveImage and PreviewImage


def save_prompt(prefix: str, image: str = "photo.png", class_type: str = "SaveImage") -> dict[str, Any]:
    save = node(class_type, images=["10", 0])
    if class_type == "SaveImage":
        save["inputs"]["filename_prefix"] = prefix
    return {"10": node("LoadImage", image=image), "9": save}


def test_save_image_naming_and_counter_continuation(base: Path, ex: Executor) -> None:
    pixels = write_image(base / "input" / "photo.png", 20, 12)
    result, _ = run(ex, save_prompt("cat"))
    assert result.outputs["9"] == {"images": [{"filename": "cat_00001_.png", "subfolder": "", "type": "output"}]}
    with Image.open(base / "output" / "cat_00001_.png") as png:
        assert np.array_equal(np.asarray(png), pixels)  # uint8 → IMAGE → uint8 is lossless

    for name in ("dog_00007_.png", "dog_00003_.png", "dogs_00050_.png", "dog_cat_00060_.png"):
        shutil.copy(base / "output" / "cat_00001_.png", base / "output" / name)
    result, _ = run(ex, save_prompt("dog"))
    assert result.outputs["9"]["images"][0]["filename"] == "dog_00008_.png"
    assert (base / "output" / "dog_00008_.png").is_file()


def test_save_image_subfolder_prefixes(base: Path, ex: Executor) -> None:
    write_image(base / "input" / "photo.png", 20, 12)
    result, _ = run(ex, save_prompt("a/b/cat"))
    assert result.outputs["9"]["images"] == [{"filename": "cat_00001_.png", "subfolder": "a/b", "type": "output"}]
    assert (base / "output" / "a" / "b" / "cat_00001_.png").is_file()
    result, _ = run(ex, save_prompt("%width%x%height%/cat"))
    assert result.outputs["9"]["images"] == [{"filename": "cat_00001_.png", "subfolder": "20x12", "type": "output"}]
    assert (base / "output" / "20x12" / "cat_00001_.png").is_file()


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "{base}/elsewhere/escape"])
def test_save_image_refuses_a_prefix_that_leaves_the_output_folder(base: Path, ex: Executor, prefix: str) -> None:
    write_image(base / "input" / "photo.png", 20, 12)
    prefix = prefix.format(base=base)  # the last one is absolute
    result, events = run(ex, save_prompt(prefix), ok=False)
    assert result.status == "error"
    assert result.error["node_id"] == "9" and result.error["node_type"] == "SaveImage"
    assert "refused path" in result.error["exception_message"]
    assert [e.data["node_id"] for e in events if e.type == "execution_error"] == ["9"]
    assert not list(base.parent.glob("escape*")) and not list(base.rglob("escape*"))
    assert not (base / "elsewhere").exists()


def test_png_prompt_and_workflow_chunks(base: Path, ex: Executor) -> None:
    write_image(base / "input" / "photo.png", 20, 12)
    prompt = save_prompt("meta")
    prompt["9"]["_meta"] = {"title": "Save ☕ café"}  # non-ASCII: json escapes it, the chunk stays tEXt
    sent = copy.deepcopy(prompt)
    workflow = {"last_node_id": 10, "nodes": [{"id": 9, "type": "SaveImage"}], "links": [], "version": 0.4}
    result, _ = run(ex, prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    file = base / "output" / result.outputs["9"]["images"][0]["filename"]
    with Image.open(file) as png:
        assert json.loads(png.text["prompt"]) == sent
        # The editor graph comes back stamped with its (here empty) model manifest and Sumi's format version.
        assert json.loads(png.text["workflow"]) == {**workflow, "models": [], "extra": {"sumi": {"format_version": 1}}}
        record = json.loads(png.text["sumi"])
        assert (record["node"], record["batch_index"], record["models"]) == ("9", 0, [])
        assert record["node_versions"] == {"LoadImage": 1, "SaveImage": 1} and record["device"] == "cpu"
    raw = file.read_bytes()
    assert b"tEXtprompt\x00" in raw and b"tEXtworkflow\x00" in raw

    result, _ = run(ex, save_prompt("plain"))
    with Image.open(base / "output" / result.outputs["9"]["images"][0]["filename"]) as png:
        assert json.loads(png.text["prompt"]) == save_prompt("plain")
        assert "workflow" not in png.text


def test_preview_image_writes_to_temp(base: Path, ex: Executor) -> None:
    pixels = write_image(base / "input" / "photo.png", 20, 12)
    result, _ = run(ex, save_prompt("", class_type="PreviewImage"))
    [item] = result.outputs["9"]["images"]
    assert item["type"] == "temp" and item["subfolder"] == ""
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", item["filename"])
    with Image.open(base / "temp" / item["filename"]) as png:
        assert np.array_equal(np.asarray(png), pixels)
    assert not (base / "output").exists() or not os.listdir(base / "output")


# ---------------------------------------------------------------- latents on disk


def test_save_latent_load_latent_round_trip(base: Path, ex: Executor) -> None:
    prompt = {**model_nodes(), "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
              "3": sampler(["5", 0], steps=1),
              "9": node("SaveLatent", samples=["3", 0], filename_prefix="lat/run")}
    result, _ = run(ex, prompt)
    assert result.outputs["9"] == {"latents": [{"filename": "run_00001_.latent", "subfolder": "lat",
                                                "type": "output"}]}
    saved = base / "output" / "lat" / "run_00001_.latent"
    with safe_open(str(saved), "pt") as f:
        assert set(f.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert json.loads(f.metadata()["prompt"]) == prompt
    shutil.copy(saved, base / "input" / "run.latent")
    back, _ = run(ex, {"20": node("LoadLatent", latent="run.latent"),
                       "21": node("SaveLatent", samples=["20", 0], filename_prefix="back")})
    assert torch.equal(back.values["20"][0]["samples"], result.values["3"][0]["samples"])


def test_load_latent_scales_files_without_the_version_key(base: Path, ex: Executor) -> None:
    samples = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    write_latent(base / "input" / "old.latent", samples, version_key=False)
    result, _ = run(ex, {"20": node("LoadLatent", latent="old.latent"),
                         "21": node("SaveLatent", samples=["20", 0], filename_prefix="x")})
    assert torch.equal(result.values["20"][0]["samples"], samples * (1.0 / 0.18215))


# ---------------------------------------------------------------- LoadImage


def test_load_image_rgba_mask_is_one_minus_alpha(base: Path, ex: Executor) -> None:
    rgba = write_image(base / "input" / "rgba.png", 16, 12, "RGBA")
    result, _ = run(ex, save_prompt("", "rgba.png", "PreviewImage"))
    image, mask = result.values["10"]
    assert image.shape == (1, 12, 16, 3) and mask.shape == (1, 12, 16)
    assert torch.equal(image[0], torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0))
    assert torch.equal(mask[0], 1.0 - torch.from_numpy(rgba[..., 3].astype(np.float32) / 255.0))


def test_load_image_rgb_gives_a_64x64_zero_mask(base: Path, ex: Executor) -> None:
    write_image(base / "input" / "photo.png", 16, 12)
    result, _ = run(ex, save_prompt("", "photo.png", "PreviewImage"))
    image, mask = result.values["10"]
    assert image.shape == (1, 12, 16, 3)
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32 and not mask.any()


def test_load_image_palette_transparency_becomes_the_mask(base: Path, ex: Executor) -> None:
    """ComfyUI reads the alpha of a palette image with a `transparency` entry (GIF-style transparent PNGs)."""
    indices = np.tile(np.arange(4, dtype=np.uint8), (8, 2))  # 8×8, palette entries 0..3
    img = Image.fromarray(indices, "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    img.save(base / "input" / "palette.png", transparency=bytes([0, 255, 128, 255]))
    result, _ = run(ex, save_prompt("", "palette.png", "PreviewImage"))
    mask = result.values["10"][1][0]
    alpha = np.array([0, 255, 128, 255], dtype=np.float32)[indices] / 255.0
    assert mask.shape == (8, 8)
    assert torch.equal(mask, 1.0 - torch.from_numpy(alpha))


def test_load_image_reruns_when_the_file_bytes_change(base: Path, ex: Executor) -> None:
    path = base / "input" / "photo.png"
    write_image(path, 16, 12, seed=1)
    first, _ = run(ex, save_prompt("", "photo.png", "PreviewImage"))
    assert set(first.ran) == {"10", "9"}
    same, _ = run(ex, save_prompt("", "photo.png", "PreviewImage"))
    assert same.ran == [] and set(same.cached) == {"10", "9"}
    os.utime(path, (1_000_000_000, 1_000_000_000))  # a new mtime with the same bytes is still a hit
    touched, _ = run(ex, save_prompt("", "photo.png", "PreviewImage"))
    assert touched.ran == []
    write_image(path, 16, 12, seed=2)
    changed, events = run(ex, save_prompt("", "photo.png", "PreviewImage"))
    assert set(changed.ran) == {"10", "9"} and executing(events) == ["10", "9"]
    assert not torch.equal(changed.values["10"][0], first.values["10"][0])


def test_load_image_that_vanished_after_validation_is_a_node_error(base: Path, ex: Executor) -> None:
    path = base / "input" / "photo.png"
    write_image(path, 16, 12)
    prompt = save_prompt("", "photo.png", "PreviewImage")
    valid = ex.prepare(prompt)
    path.unlink()
    events: list[Event] = []
    result = ex.execute(valid, prompt, on_event=events.append)
    assert result.status == "error"
    assert result.error["node_id"] == "10" and result.error["node_type"] == "LoadImage"
    assert [e.type for e in events][-2:] == ["execution_error", "executing"]


# ---------------------------------------------------------------- validation on real nodes


def test_validation_errors_on_real_nodes(base: Path, ex: Executor) -> None:
    prompt = txt2img()
    prompt["4"]["inputs"]["ckpt_name"] = "missing_model.safetensors"
    prompt["3"]["inputs"]["sampler_name"] = "eulr"
    prompt["3"]["inputs"]["steps"] = 0
    with pytest.raises(ValidationFailed) as info:
        ex.run(prompt)
    errors = {(e.node_id, e.input_name): e for e in info.value.errors}
    assert set(errors) == {("4", "ckpt_name"), ("3", "sampler_name"), ("3", "steps")}

    ckpt = errors["4", "ckpt_name"]
    assert ckpt.type == "value_not_in_list" and ckpt.class_type == "CheckpointLoaderSimple"
    assert ckpt.received == "missing_model.safetensors" and ckpt.expected == sorted(models.TINY_CHECKPOINTS)
    assert "missing_model.safetensors" in ckpt.hint
    assert str(base / "models" / "checkpoints") in ckpt.hint

    name = errors["3", "sampler_name"]
    assert name.type == "value_not_in_list" and name.received == "eulr"
    assert name.expected == SAMPLER_NAMES and {"euler", "euler_ancestral", "dpmpp_2m"} <= set(name.expected)
    assert "'euler'" in name.hint

    steps = errors["3", "steps"]
    assert steps.type == "value_smaller_than_min" and steps.received == 0 and steps.expected == ">= 1"
    assert not (base / "output").exists()  # nothing ran


# ---------------------------------------------------------------- CLIPSetLastLayer


def test_clip_set_last_layer_changes_cond_but_not_pooled(base: Path, ex: Executor) -> None:
    text = "a lighthouse at dawn"
    prompt = {**model_nodes(text),
              "40": node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-2),
              "41": node("CLIPTextEncode", text=text, clip=["40", 0]),
              "50": node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-1),
              "51": node("CLIPTextEncode", text=text, clip=["50", 0]),
              "5": node("EmptyLatentImage", width=64, height=64, batch_size=1)}
    for positive in ("6", "41", "51"):
        prompt["6" + positive] = sampler(["5", 0], steps=1, positive=positive)
        prompt["7" + positive] = node("SaveLatent", samples=["6" + positive, 0], filename_prefix=positive)
    result, _ = run(ex, prompt)
    [[cond, extra]] = result.values["6"][0]
    [[skip_cond, skip_extra]] = result.values["41"][0]
    [[last_cond, last_extra]] = result.values["51"][0]
    assert cond.shape == skip_cond.shape and cond.shape[:2] == (1, 77)
    assert (cond - skip_cond).abs().max() > 1e-3
    assert torch.equal(extra["pooled_output"], skip_extra["pooled_output"])
    assert torch.equal(cond, last_cond) and torch.equal(extra["pooled_output"], last_extra["pooled_output"])
    assert (result.values["66"][0]["samples"] - result.values["641"][0]["samples"]).abs().max() > 1e-4
