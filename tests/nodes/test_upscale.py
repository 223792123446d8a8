"""Upscale models (nodes/upscale.py, nodes/upscaler.py): ComfyUI's schemas; the tiny ESRGAN built on first use and
run through spandrel; tiling that matches the untiled forward (exactly for a pixelwise model, hand-computed
blend weights), tile halving on out-of-memory, per-tile progress and interrupts; a file spandrel does not know
(an SD checkpoint, a LoRA, junk, an unsafe pickle) is a validation error saying what it appears to be; cache
fingerprints follow the file and the device policy; the model is counted in the models pool."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from executor.cache import measure
from executor.errors import ValidationFailed
from executor.runner import Executor
from nodes import build_registry, devices, models, paths, upscaler
from nodes.models import TINY_UPSCALE_MODELS, ensure_tiny_upscale_model
from nodes.upscale import UpscaleModelLoader
from nodes.upscaler import UpscaleModel, tile_count, tiled_scale, upscale
from nodes.upscaler_fixtures import TINY, write_esrgan

TINY_NAME = next(iter(TINY_UPSCALE_MODELS))
REGISTRY = build_registry()


@pytest.fixture(scope="module")
def tiny(base: Path) -> UpscaleModel:
    return upscaler.load_upscale_model(ensure_tiny_upscale_model(TINY_NAME), torch.device("cpu"))


def _upscale_prompt(image: dict[str, Any], model_name: str = TINY_NAME) -> dict[str, Any]:
    return {"1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
            "2": image,
            "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def test_schemas_match_comfyui(base: Path) -> None:
    loader = REGISTRY.nodes["UpscaleModelLoader"].object_info()
    assert (loader["display_name"], loader["category"]) == ("Load Upscale Model", "loaders")
    assert list(loader["input"]["required"]) == ["model_name"]
    assert TINY_NAME in loader["input"]["required"]["model_name"][0]
    assert loader["output"] == ["UPSCALE_MODEL"] and loader["output_name"] == ["UPSCALE_MODEL"]
    node = REGISTRY.nodes["ImageUpscaleWithModel"].object_info()
    assert (node["display_name"], node["category"]) == ("Upscale Image (using Model)", "image/upscaling")
    assert {k: v[0] for k, v in node["input"]["required"].items()} == {"upscale_model": "UPSCALE_MODEL",
                                                                      "image": "IMAGE"}
    assert list(node["input"]["required"]) == ["upscale_model", "image"] and "optional" not in node["input"]
    assert node["output"] == ["IMAGE"] and node["output_name"] == ["IMAGE"] and not node["output_node"]


def test_tiny_esrgan_is_built_on_first_use_and_upscales_4x(base: Path, tiny: UpscaleModel) -> None:
    path = base / "models" / "upscale_models" / TINY_NAME
    assert path.is_file() and path.stat().st_size < 2 << 20
    assert (tiny.architecture, tiny.scale, type(tiny.descriptor.model).__name__) == ("ESRGAN", 4, "RRDBNet")
    assert tiny.descriptor.tags == [f"{TINY['features']}nf", f"{TINY['blocks']}nb"]
    paths.ensure_example_inputs()
    ex = Executor(build_registry())
    result = ex.run(_upscale_prompt({"class_type": "LoadImage", "inputs": {"image": "sumi_example.png"}}))
    assert result.status == "success", result.error
    image, out = result.values["2"][0], result.values["3"][0]
    assert out.shape == (1, 1024, 1024, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    # 256 px fits in one 512 px tile: exactly the model's own forward, clamped, channels last
    whole = tiny.descriptor(image.movedim(-1, 1)).movedim(1, -1).clamp(0, 1)
    assert torch.equal(out, whole)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 0.01
    again = ex.run(_upscale_prompt({"class_type": "LoadImage", "inputs": {"image": "sumi_example.png"}}))
    assert {"1", "2", "3"} <= set(again.cached) and not again.ran


def _interior_only_one_tile(whole: torch.Tensor, tiled: torch.Tensor, limit: int) -> float:
    return float((whole[:, :limit, :limit] - tiled[:, :limit, :limit]).abs().max())


def test_tiled_upscale_matches_the_untiled_forward(tiny: UpscaleModel) -> None:
    image = torch.rand((1, 150, 200, 3), generator=torch.Generator().manual_seed(0))
    whole = upscale(tiny, image, tile=1024)
    calls: list[tuple[int, int]] = []
    tiled = upscale(tiny, image, lambda done, total: calls.append((done, total)), tile=128, overlap=32)
    assert tiled.shape == whole.shape == (1, 600, 800, 3)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)] and tile_count(150, 200, 128, 32) == 4
    # tiles start at 0 and 96 on both axes; the 1-block net sees 33 px around a pixel, so input pixels below
    # 128 - 34 lie in the first tile only with their whole receptive field: the same numbers as untiled
    assert _interior_only_one_tile(whole, tiled, 94 * 4) <= 1e-6
    # at the seams a tile's border sees zero padding where the whole image has pixels: measured at most 0.0094
    # (output std 0.039), 6e-5 on average, 0.04 % of values more than one 8-bit level off
    diff = (whole - tiled).abs()
    assert float(diff.max()) <= 0.02 and float(diff.mean()) <= 2e-4 and float((diff > 1 / 255).float().mean()) < 0.002


def _nearest(scale: int) -> Any:
    return lambda t: F.interpolate(t, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize(("shape", "scale", "tile", "overlap", "exact"), [
    ((1, 3, 513, 600), 2, 512, 32, True), ((1, 3, 97, 45), 1, 64, 8, True),
    # the last column of tiles is 40 px wide: its two ramps meet, and the products of four ramp values need more
    # than float32's 24 bits, so a few values round (by one unit in the last place)
    ((2, 3, 300, 1000), 4, 128, 32, False)])
def test_a_pixelwise_model_tiles_exactly(shape: tuple[int, ...], scale: int, tile: int, overlap: int,
                                         exact: bool) -> None:
    # values with few mantissa bits, so that Σ p·w / Σ w is exact in float32 and any misplaced tile shows
    image = torch.randint(0, 65, shape, generator=torch.Generator().manual_seed(1)).float() / 64
    fn = _nearest(scale)
    count = []
    tiled = tiled_scale(image, fn, scale, 3, tile, overlap, lambda: count.append(1))
    want = fn(image)
    assert torch.equal(tiled, want) if exact else float((tiled - want).abs().max()) <= 6e-8
    assert len(count) == shape[0] * tile_count(shape[2], shape[3], tile, overlap) > shape[0]
    noisy = torch.rand(shape, generator=torch.Generator().manual_seed(2))  # any values: float rounding only
    assert float((tiled_scale(noisy, fn, scale, 3, tile, overlap) - fn(noisy)).abs().max()) <= 2.4e-7


def test_blend_weights_are_linear_feathers() -> None:
    # a 1 × 200 image, tiles [0, 128) and [96, 200): tile k outputs the constant k; in the overlap the first tile's
    # weight falls (128 - x)/32, the second's rises (x - 95)/32, so the result is (x - 95)/33
    calls = iter(range(10))
    out = tiled_scale(torch.zeros((1, 1, 1, 200)), lambda t: torch.full_like(t, float(next(calls))), 1, 1, 128, 32)
    x = torch.arange(200)
    want = torch.where(x < 96, 0.0, torch.where(x >= 128, 1.0, (x - 95) / 33))
    assert torch.allclose(out[0, 0, 0], want.float(), atol=1e-7)


class FakeModel:
    """A spandrel-like descriptor: nearest ×2; raises out-of-memory for tiles with a side over `limit`."""

    scale, input_channels, output_channels = 2, 3, 3
    architecture = argparse.Namespace(name="Fake")

    def __init__(self, limit: int) -> None:
        self.limit, self.sizes = limit, []

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(t.shape[2:]))
        if max(t.shape[2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return _nearest(2)(t)


def test_out_of_memory_halves_the_tile_down_to_128() -> None:
    fake = FakeModel(limit=128)
    image = torch.randint(0, 65, (1, 300, 300, 3), generator=torch.Generator().manual_seed(2)).float() / 64
    calls: list[tuple[int, int]] = []
    out = upscale(UpscaleModel(fake, torch.device("cpu"), torch.float32), image,
                  lambda done, total: calls.append((done, total)))
    assert fake.sizes[:2] == [300, 256] and set(fake.sizes[2:]) == {128, 108}  # whole, 256, then 128 (last: 108)
    assert calls == [(i, 9) for i in range(1, 10)]  # counted afresh for the 3 × 3 tiles of 128
    assert torch.equal(out, _nearest(2)(image.movedim(-1, 1)).movedim(1, -1))
    never = FakeModel(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        upscale(UpscaleModel(never, torch.device("cpu"), torch.float32), image)
    assert never.sizes == [300, 256, 128]  # 64 would be below the minimum: the error stands


def test_progress_per_tile_and_interrupt(base: Path, tiny: UpscaleModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upscaler, "TILE", 64)
    image = {"class_type": "EmptyImage", "inputs": {"width": 100, "height": 80, "batch_size": 1, "color": 0x336699}}
    ex = Executor(build_registry())
    events: list[Any] = []
    result = ex.run(_upscale_prompt(image), on_event=events.append)
    assert result.status == "success", result.error
    steps = [(e.data["value"], e.data["max"]) for e in events if e.type == "progress" and e.data["node"] == "3"]
    assert steps == [(i, 6) for i in range(1, 7)]  # 3 tile columns (0, 32, 64) × 2 rows (0, 32)
    assert result.values["3"][0].shape == (1, 320, 400, 3)
    seen: list[int] = []

    def stop_at_two(e: Any) -> None:
        if e.type == "progress":
            seen.append(e.data["value"])
            if e.data["value"] == 2:
                ex.interrupt_flag.set()

    image["inputs"]["color"] = 0x112233
    stopped = ex.run(_upscale_prompt(image), on_event=stop_at_two)
    assert stopped.status == "interrupted" and seen == [1, 2] and "4" not in stopped.ran


def _errors(prompt: dict[str, Any]) -> dict[tuple[str | None, str | None], Any]:
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    return {(e.node_id, e.input_name): e for e in info.value.errors}


def _junk(path: Path) -> None:
    save_file({"foo.weight": torch.zeros(3, 3)}, str(path))


def _unsafe(path: Path) -> None:
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "args": argparse.Namespace(scale=4)}, path)


@pytest.mark.parametrize(("name", "make", "says"), [
    ("sd15_checkpoint.safetensors", lambda p: shutil.copy(models.ensure_default_checkpoint(), p),
     ["not an upscale model spandrel recognises", "detected: an SD1.x checkpoint", "Load Checkpoint"]),
    ("a_lora.safetensors", lambda p: shutil.copy(models.ensure_tiny_lora(next(iter(models.TINY_LORAS))), p),
     ["detected: a LoRA/LyCORIS adapter", "LoRA loader"]),
    ("junk.safetensors", _junk, ["detected: 1 tensors of no architecture spandrel knows", "foo.weight"]),
    ("unsafe.pth", _unsafe, ["refused for safety", "argparse.Namespace"]),
    ("damaged.pth", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), ["not a readable PyTorch file"]),
    ("int_keys.pth", lambda p: torch.save({0: torch.zeros(1), "conv_first.weight": torch.zeros(64, 3, 3, 3)}, p),
     ["detected: 1 tensors of no architecture spandrel knows", "conv_first.weight"]),  # spandrel wants str keys
])
def test_a_file_spandrel_cannot_use_is_a_validation_error(base: Path, name: str, make: Any,
                                                           says: list[str]) -> None:
    folder = base / "models" / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    make(folder / name)
    errors = _errors(_upscale_prompt({"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 0}}, name))
    err = errors[("1", "model_name")]
    assert err.type == "custom_validation_failed" and err.class_type == "UpscaleModelLoader"
    assert err.message.startswith(f"{name}: ") and "Traceback" not in err.message
    for text in says:
        assert text in err.message
    assert list(errors) == [("1", "model_name")]


def test_a_safetensors_esrgan_loads_like_the_pth(base: Path, tiny: UpscaleModel) -> None:
    sd = torch.load(ensure_tiny_upscale_model(TINY_NAME), weights_only=True)["params_ema"]
    target = base / "models" / "upscale_models" / "esrgan_copy.safetensors"
    save_file(sd, str(target))
    assert UpscaleModelLoader.check("esrgan_copy.safetensors") == {}
    assert upscaler.identify(target) == "ESRGAN"
    copy = upscaler.load_upscale_model(target, torch.device("cpu"))
    image = torch.rand((1, 3, 20, 24), generator=torch.Generator().manual_seed(3))
    assert torch.equal(copy(image), tiny(image))


def test_fingerprint_follows_the_file_and_the_policy(base: Path) -> None:
    target = base / "models" / "upscale_models" / "changing.pth"
    write_esrgan(target, **TINY)
    first = UpscaleModelLoader.fingerprint("changing.pth")
    assert first == UpscaleModelLoader.fingerprint("changing.pth")
    write_esrgan(target, **{**TINY, "seed": 1})  # same size, other weights: a new mtime
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000))
    second = UpscaleModelLoader.fingerprint("changing.pth")
    assert second != first
    saved = devices.POLICY
    try:
        devices.configure("cpu", "bf16")
        assert UpscaleModelLoader.fingerprint("changing.pth") != second
    finally:
        devices.POLICY = saved
    assert UpscaleModelLoader.fingerprint(TINY_NAME).endswith(f"precision={saved.precision}")


def test_the_model_counts_in_the_models_pool(base: Path) -> None:
    ex = Executor(build_registry())
    prompt = _upscale_prompt({"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                      "color": 0}})
    result = ex.run(prompt)
    assert result.status == "success", result.error
    model = result.values["1"][0]
    weights = sum(p.numel() * p.element_size() for p in model.descriptor.model.parameters())
    assert weights > 1 << 20 and measure((model,))[0] == weights
    stats = ex.cache.stats()["models"]
    assert stats["entries"] == 1 and stats["bytes"] == weights


def test_precision_is_fp32_unless_asked_and_supported(base: Path) -> None:
    path = ensure_tiny_upscale_model(TINY_NAME)
    assert upscaler.load_upscale_model(path, torch.device("cpu")).dtype == torch.float32
    half = upscaler.load_upscale_model(path, torch.device("cpu"), "bf16")
    assert half.dtype == torch.bfloat16 and next(half.descriptor.model.parameters()).dtype == torch.bfloat16
    image = torch.rand((1, 12, 10, 3), generator=torch.Generator().manual_seed(4))
    out = upscale(half, image)
    assert out.dtype == torch.float32 and out.shape == (1, 48, 40, 3)
