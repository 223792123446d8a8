"""The latent, image, mask and primitive tool nodes: ComfyUI's schemas (names, order, defaults, ranges, options,
outputs) and their values on small hand-made tensors.

Proves: composites put the source's exact values at x, y (multiples of 8 for latents) and leave the rest, with
ComfyUI's feather ramps, batch repetition and clipping at the edges; batch slicing keeps the noise of the full
batch; blend and mask-composite formulas; GrowMask's cross vs square; FeatherMask's ramps (with ComfyUI's
right/bottom indexing); ImageScale sizes, aspect and centre crop; the outpaint mask's squared ramp; Canny on a
step edge; VAEEncodeForInpaint's grey fill and grown noise mask (the box ComfyUI computed for the parity input);
LoadImageMask's channels and content fingerprint; MaskPreview's files; validation errors naming node and input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from executor.errors import ValidationFailed
from executor.runner import Event, Executor, RunResult
from nodes import build_registry, models, paths
from nodes.compositing import resize_image
from nodes.diffusion.sample import prepare_noise

REGISTRY = build_registry()
CKPT = models.DEFAULT_CHECKPOINT
FIXTURES = Path(__file__).parents[1] / "fixtures"


def call(type_name: str, **inputs: Any) -> tuple[Any, ...]:
    out = REGISTRY.nodes[type_name]().run(None, **inputs)
    return out.outputs if hasattr(out, "outputs") else out


def one(type_name: str, **inputs: Any) -> Any:
    [value] = call(type_name, **inputs)
    return value


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def base(tiny_base: Path) -> Path:
    return tiny_base  # tests/conftest.py: a fresh base per test with the tiny checkpoint


@pytest.fixture
def ex(base: Path) -> Executor:
    return Executor(build_registry())


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def run(ex: Executor, prompt: dict[str, Any]) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    result = ex.run(prompt, on_event=events.append)
    assert result.status == "success", result.error
    return result, events


# ---------------------------------------------------------------- schemas


def spec(type_name: str) -> dict[str, Any]:
    info = REGISTRY.nodes[type_name].object_info()
    sections = (info["input"].get(section, {}) for section in ("required", "optional"))
    return {name: value for section in sections for name, value in section.items()}


P8 = {"default": 0, "min": 0, "max": 16384, "step": 8}
P1 = {"default": 0, "min": 0, "max": 16384, "step": 1}
SIZE = {"default": 512, "min": 1, "max": 16384, "step": 1}
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

# ComfyUI 0.3.64's declarations: inputs in order with their options, then the outputs (types, names).
SCHEMAS: dict[str, tuple[list[tuple[str, Any, dict[str, Any]]], list[str], list[str]]] = {
    "LatentComposite": ([("samples_to", "LATENT", {}), ("samples_from", "LATENT", {}), ("x", "INT", P8),
                         ("y", "INT", P8), ("feather", "INT", P8)], ["LATENT"], ["LATENT"]),
    "LatentCompositeMasked": ([("destination", "LATENT", {}), ("source", "LATENT", {}), ("x", "INT", P8),
                               ("y", "INT", P8), ("resize_source", "BOOLEAN", {"default": False}),
                               ("mask", "MASK", {})], ["LATENT"], ["LATENT"]),
    "RepeatLatentBatch": ([("samples", "LATENT", {}), ("amount", "INT", {"default": 1, "min": 1, "max": 64})],
                          ["LATENT"], ["LATENT"]),
    "LatentFromBatch": ([("samples", "LATENT", {}), ("batch_index", "INT", {"default": 0, "min": 0, "max": 63}),
                         ("length", "INT", {"default": 1, "min": 1, "max": 64})], ["LATENT"], ["LATENT"]),
    "LatentBlend": ([("samples1", "LATENT", {}), ("samples2", "LATENT", {}),
                     ("blend_factor", "FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})],
                    ["LATENT"], ["LATENT"]),
    "SetLatentNoiseMask": ([("samples", "LATENT", {}), ("mask", "MASK", {})], ["LATENT"], ["LATENT"]),
    "VAEEncodeForInpaint": ([("pixels", "IMAGE", {}), ("vae", "VAE", {}), ("mask", "MASK", {}),
                             ("grow_mask_by", "INT", {"default": 6, "min": 0, "max": 64, "step": 1})],
                            ["LATENT"], ["LATENT"]),
    "ImageInvert": ([("image", "IMAGE", {})], ["IMAGE"], ["IMAGE"]),
    "ImageCrop": ([("image", "IMAGE", {}), ("width", "INT", SIZE), ("height", "INT", SIZE), ("x", "INT", P1),
                   ("y", "INT", P1)], ["IMAGE"], ["IMAGE"]),
    "ImageBatch": ([("image1", "IMAGE", {}), ("image2", "IMAGE", {})], ["IMAGE"], ["IMAGE"]),
    "ImageBlend": ([("image1", "IMAGE", {}), ("image2", "IMAGE", {}),
                    ("blend_factor", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                    ("blend_mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"], {})],
                   ["IMAGE"], ["IMAGE"]),
    "ImageCompositeMasked": ([("destination", "IMAGE", {}), ("source", "IMAGE", {}), ("x", "INT", P1),
                              ("y", "INT", P1), ("resize_source", "BOOLEAN", {"default": False}),
                              ("mask", "MASK", {})], ["IMAGE"], ["IMAGE"]),
    "EmptyImage": ([("width", "INT", SIZE), ("height", "INT", SIZE),
                    ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
                    ("color", "INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"})],
                   ["IMAGE"], ["IMAGE"]),
    "GetImageSize": ([("image", "IMAGE", {})], ["INT", "INT", "INT"], ["width", "height", "batch_size"]),
    "ImageScale": ([("image", "IMAGE", {}), ("upscale_method", UPSCALE, {}),
                    ("width", "INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                    ("height", "INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                    ("crop", ["disabled", "center"], {})], ["IMAGE"], ["IMAGE"]),
    "ImageScaleBy": ([("image", "IMAGE", {}), ("upscale_method", UPSCALE, {}),
                      ("scale_by", "FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})],
                     ["IMAGE"], ["IMAGE"]),
    "ImageScaleToTotalPixels": ([("image", "IMAGE", {}), ("upscale_method", UPSCALE, {}),
                                 ("megapixels", "FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
                                 ("resolution_steps", "INT", {"default": 1, "min": 1, "max": 256})],
                                ["IMAGE"], ["IMAGE"]),
    "ImagePadForOutpaint": ([("image", "IMAGE", {}), ("left", "INT", P8), ("top", "INT", P8), ("right", "INT", P8),
                             ("bottom", "INT", P8),
                             ("feathering", "INT", {"default": 40, "min": 0, "max": 16384, "step": 1})],
                            ["IMAGE", "MASK"], ["IMAGE", "MASK"]),
    "Canny": ([("image", "IMAGE", {}),
               ("low_threshold", "FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
               ("high_threshold", "FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01})],
              ["IMAGE"], ["IMAGE"]),
    "ImageToMask": ([("image", "IMAGE", {}), ("channel", ["red", "green", "blue", "alpha"], {})],
                    ["MASK"], ["MASK"]),
    "MaskToImage": ([("mask", "MASK", {})], ["IMAGE"], ["IMAGE"]),
    "InvertMask": ([("mask", "MASK", {})], ["MASK"], ["MASK"]),
    "GrowMask": ([("mask", "MASK", {}), ("expand", "INT", {"default": 0, "min": -16384, "max": 16384, "step": 1}),
                  ("tapered_corners", "BOOLEAN", {"default": True})], ["MASK"], ["MASK"]),
    "FeatherMask": ([("mask", "MASK", {}), ("left", "INT", P1), ("top", "INT", P1), ("right", "INT", P1),
                     ("bottom", "INT", P1)], ["MASK"], ["MASK"]),
    "SolidMask": ([("value", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                   ("width", "INT", SIZE), ("height", "INT", SIZE)], ["MASK"], ["MASK"]),
    "ThresholdMask": ([("mask", "MASK", {}),
                       ("value", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})], ["MASK"], ["MASK"]),
    "MaskComposite": ([("destination", "MASK", {}), ("source", "MASK", {}), ("x", "INT", P1), ("y", "INT", P1),
                       ("operation", ["multiply", "add", "subtract", "and", "or", "xor"], {})], ["MASK"], ["MASK"]),
    "MaskPreview": ([("mask", "MASK", {})], [], []),
    "PrimitiveString": ([("value", "STRING", {})], ["STRING"], ["STRING"]),
    "PrimitiveStringMultiline": ([("value", "STRING", {"multiline": True})], ["STRING"], ["STRING"]),
    "PrimitiveInt": ([("value", "INT", {"min": -(2**63 - 1), "max": 2**63 - 1, "control_after_generate": True})],
                     ["INT"], ["INT"]),
    "PrimitiveFloat": ([("value", "FLOAT", {"min": -(2**63 - 1), "max": 2**63 - 1})], ["FLOAT"], ["FLOAT"]),
    "PrimitiveBoolean": ([("value", "BOOLEAN", {})], ["BOOLEAN"], ["BOOLEAN"]),
}

DISPLAY = {"LatentComposite": ("Latent Composite", "latent"),
           "LatentCompositeMasked": ("LatentCompositeMasked", "latent"),
           "RepeatLatentBatch": ("Repeat Latent Batch", "latent/batch"),
           "LatentFromBatch": ("Latent From Batch", "latent/batch"), "LatentBlend": ("Latent Blend", "_for_testing"),
           "SetLatentNoiseMask": ("Set Latent Noise Mask", "latent/inpaint"),
           "VAEEncodeForInpaint": ("VAE Encode (for Inpainting)", "latent/inpaint"),
           "ImageInvert": ("Invert Image", "image"), "ImageCrop": ("Image Crop", "image/transform"),
           "ImageBatch": ("Batch Images", "image"), "ImageBlend": ("ImageBlend", "image/postprocessing"),
           "ImageScale": ("Upscale Image", "image/upscaling"), "ImageScaleBy": ("Upscale Image By", "image/upscaling"),
           "ImageScaleToTotalPixels": ("Scale Image to Total Pixels", "image/upscaling"),
           "ImagePadForOutpaint": ("Pad Image for Outpainting", "image"), "GetImageSize": ("Get Image Size", "image"),
           "Canny": ("Canny", "image/preprocessors"), "ImageToMask": ("Convert Image to Mask", "mask"),
           "MaskToImage": ("Convert Mask to Image", "mask"), "GrowMask": ("Grow Mask", "mask"),
           "MaskPreview": ("Preview Mask", "mask"), "LoadImageMask": ("Load Image (as Mask)", "mask"),
           "PrimitiveInt": ("Int", "utils/primitive"), "PrimitiveStringMultiline": ("String (Multiline)",
                                                                                   "utils/primitive")}


@pytest.mark.parametrize("type_name", sorted(SCHEMAS))
def test_schema_matches_comfyui(type_name: str) -> None:
    declared, out_types, out_names = SCHEMAS[type_name]
    info = REGISTRY.nodes[type_name].object_info()
    inputs = spec(type_name)
    assert list(inputs) == [name for name, _, _ in declared]
    for name, kind, options in declared:
        head, *rest = inputs[name]
        assert head == kind, name
        opts = {k: v for k, v in (rest[0] if rest else {}).items() if k != "tooltip"}
        assert opts == options, name
    assert info["output"] == out_types and info["output_name"] == out_names
    optional = set(info["input"].get("optional", {}))
    expected_optional = {"LatentCompositeMasked": {"mask"}, "ImageCompositeMasked": {"mask"},
                         "ImageScaleToTotalPixels": {"resolution_steps"}}.get(type_name, set())
    assert optional == expected_optional


@pytest.mark.parametrize("type_name", sorted(DISPLAY))
def test_display_names_and_categories(type_name: str) -> None:
    info = REGISTRY.nodes[type_name].object_info()
    assert (info["display_name"], info["category"]) == DISPLAY[type_name]


def test_output_nodes_and_hidden_inputs() -> None:
    preview = REGISTRY.nodes["MaskPreview"].object_info()
    assert preview["output_node"] is True
    assert preview["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert REGISTRY.nodes["GetImageSize"].object_info()["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    mask = REGISTRY.nodes["LoadImageMask"].object_info()["input"]["required"]
    assert list(mask) == ["image", "channel"]
    assert mask["image"][1] == {"image_upload": True} and mask["channel"] == [["alpha", "red", "green", "blue"]]


# ---------------------------------------------------------------- latent tools


def latent(samples: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return {"samples": samples, **extra}


def test_latent_composite_puts_the_source_at_x_y_in_latent_units_and_leaves_the_rest() -> None:
    to = seeded(1, 4, 8, 8)
    src = seeded(1, 4, 2, 3, seed=1) + 5
    out = one("LatentComposite", samples_to=latent(to, noise_mask=torch.ones(1, 1, 8, 8)),
              samples_from=latent(src), x=16, y=8, feather=0)
    assert torch.equal(out["samples"][:, :, 1:3, 2:5], src)
    rest = torch.ones(8, 8, dtype=torch.bool)
    rest[1:3, 2:5] = False
    assert torch.equal(out["samples"][:, :, rest], to[:, :, rest])
    assert "noise_mask" in out and torch.equal(to, seeded(1, 4, 8, 8))  # keys kept, input untouched
    # x = 61 pixels is latent column 7 (61 // 8); the part of the source past the right edge is dropped.
    clipped = one("LatentComposite", samples_to=latent(to), samples_from=latent(src), x=61, y=0,
                  feather=0)["samples"]
    assert torch.equal(clipped[:, :, 0:2, 7:8], src[:, :, :, :1])
    assert torch.equal(clipped[:, :, 2:, :], to[:, :, 2:, :])


def test_latent_composite_feathers_only_edges_inside_the_destination() -> None:
    to, src = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 4, 4)
    inner = one("LatentComposite", samples_to=latent(to), samples_from=latent(src), x=16, y=16,
                feather=16)["samples"][0, 0]
    # feather 16 px = 2 latent rows/columns: weights 1/2 on the outer ring, 1 inside, products at corners.
    expected = torch.zeros(8, 8)
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    expected[2:6, 2:6] = ramp[:, None] * ramp[None, :]
    assert torch.equal(inner, expected)
    corner = one("LatentComposite", samples_to=latent(to), samples_from=latent(src), x=0, y=0,
                 feather=16)["samples"][0, 0]
    expected = torch.zeros(8, 8)
    ramp = torch.tensor([1.0, 1.0, 1.0, 0.5])  # the image border is not feathered
    expected[0:4, 0:4] = ramp[:, None] * ramp[None, :]
    assert torch.equal(corner, expected)


def test_latent_composite_masked_blends_by_the_mask_and_repeats_the_source_batch() -> None:
    dest, src = torch.zeros(2, 4, 8, 8), torch.full((1, 4, 4, 4), 2.0)
    mask = torch.zeros(1, 4, 4)
    mask[:, :, 2:] = 0.5
    out = one("LatentCompositeMasked", destination=latent(dest, batch_index=[3, 4]), source=latent(src),
              x=32, y=8, resize_source=False, mask=mask)
    assert out["batch_index"] == [3, 4] and out["samples"].shape == (2, 4, 8, 8)
    region = out["samples"][:, :, 1:5, 4:8]
    assert torch.equal(region[..., :2], torch.zeros(2, 4, 4, 2))
    assert torch.equal(region[..., 2:], torch.ones(2, 4, 4, 2))
    assert out["samples"].sum() == 2 * 4 * 4 * 2  # nothing outside the region changed
    full = one("LatentCompositeMasked", destination=latent(dest), source=latent(src), x=0, y=0,
               resize_source=True)["samples"]
    assert torch.equal(full, torch.full((2, 4, 8, 8), 2.0))


def test_repeat_latent_batch_repeats_samples_masks_and_batch_indices() -> None:
    samples = seeded(2, 4, 2, 2)
    out = one("RepeatLatentBatch", samples=latent(samples, batch_index=[5, 6], noise_mask=torch.ones(2, 1, 2, 2)),
              amount=3)
    assert torch.equal(out["samples"], torch.cat([samples] * 3))
    assert out["batch_index"] == [5, 6, 7, 8, 9, 10] and out["noise_mask"].shape == (6, 1, 2, 2)
    single = one("RepeatLatentBatch", samples=latent(samples, noise_mask=torch.ones(1, 1, 2, 2)), amount=2)
    assert single["noise_mask"].shape == (1, 1, 2, 2) and "batch_index" not in single


def test_latent_from_batch_slices_and_keeps_the_noise_of_the_full_batch() -> None:
    samples = seeded(4, 4, 8, 8)
    masks = seeded(2, 1, 8, 8, seed=3)
    out = one("LatentFromBatch", samples=latent(samples, noise_mask=masks), batch_index=1, length=2)
    assert torch.equal(out["samples"], samples[1:3]) and out["batch_index"] == [1, 2]
    assert torch.equal(out["noise_mask"], torch.stack([masks[1], masks[0]]))  # masks cycle over the batch
    full = prepare_noise(samples, 42)
    assert torch.equal(prepare_noise(out["samples"], 42, out["batch_index"]), full[1:3])
    last = one("LatentFromBatch", samples=latent(samples), batch_index=63, length=64)
    assert torch.equal(last["samples"], samples[3:]) and last["batch_index"] == [3]
    again = one("LatentFromBatch", samples=out, batch_index=1, length=1)
    assert again["batch_index"] == [2] and torch.equal(again["samples"], samples[2:3])


def test_latent_blend_mixes_and_resizes_the_second_latent() -> None:
    a, b = torch.full((1, 4, 8, 8), 2.0), torch.full((1, 4, 8, 8), 6.0)
    out = one("LatentBlend", samples1=latent(a, noise_mask=1), samples2=latent(b), blend_factor=0.25)
    assert torch.allclose(out["samples"], torch.full((1, 4, 8, 8), 5.0)) and out["noise_mask"] == 1
    small = one("LatentBlend", samples1=latent(a), samples2=latent(torch.full((1, 4, 4, 4), 6.0)), blend_factor=0.5)
    assert small["samples"].shape == (1, 4, 8, 8) and torch.allclose(small["samples"], torch.full((1, 4, 8, 8), 4.0))


def test_set_latent_noise_mask_reshapes_the_mask_and_keeps_the_rest() -> None:
    samples = latent(torch.zeros(1, 4, 8, 8), batch_index=[0])
    out = one("SetLatentNoiseMask", samples=samples, mask=torch.ones(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64) and out["batch_index"] == [0] and "noise_mask" not in samples
    assert one("SetLatentNoiseMask", samples=samples, mask=torch.ones(3, 16, 16))["noise_mask"].shape == (3, 1, 16, 16)


# ---------------------------------------------------------------- image tools


def test_image_invert_crop_and_size() -> None:
    image = seeded(2, 10, 12, 3)
    assert torch.equal(one("ImageInvert", image=image), 1.0 - image)
    crop = one("ImageCrop", image=image, width=5, height=4, x=3, y=2)
    assert torch.equal(crop, image[:, 2:6, 3:8, :])
    edge = one("ImageCrop", image=image, width=5, height=4, x=100, y=100)  # a corner past the edge: last pixel
    assert torch.equal(edge, image[:, 9:, 11:, :])
    assert call("GetImageSize", image=image) == (12, 10, 2)


def test_image_batch_resizes_the_second_image_and_matches_channels() -> None:
    a, b = seeded(1, 8, 8, 3), seeded(2, 8, 8, 3, seed=1)
    assert torch.equal(one("ImageBatch", image1=a, image2=b), torch.cat([a, b]))
    wide = seeded(1, 4, 16, 3, seed=2)
    out = one("ImageBatch", image1=a, image2=wide)
    assert out.shape == (2, 8, 8, 3)
    # image2 is centre-cropped to image1's aspect ratio (16 × 4 → columns 6..9), then bilinearly resized.
    expected = torch.nn.functional.interpolate(wide[:, :, 6:10, :].movedim(-1, 1), size=(8, 8), mode="bilinear")
    assert torch.equal(out[1:], expected.movedim(1, -1))
    rgba = one("ImageBatch", image1=torch.cat([a, torch.zeros(1, 8, 8, 1)], -1), image2=b)
    assert rgba.shape == (3, 8, 8, 4) and torch.equal(rgba[1:, ..., 3], torch.ones(2, 8, 8))


@pytest.mark.parametrize(("mode", "value"), [
    ("normal", 0.75), ("multiply", 0.1875), ("screen", 0.8125), ("overlay", 0.375),
    ("soft_light", 0.25 + 0.5 * (0.5 - 0.25)), ("difference", -0.5)])
def test_image_blend_modes(mode: str, value: float) -> None:
    """a = 0.25, b = 0.75: the mode's value, mixed a · (1 − f) + mode · f, then clamped (difference is signed)."""
    a, b = torch.full((1, 2, 2, 3), 0.25), torch.full((1, 2, 2, 3), 0.75)
    for factor in (1.0, 0.5, 0.2):
        out = one("ImageBlend", image1=a, image2=b, blend_factor=factor, blend_mode=mode)
        expected = min(1.0, max(0.0, 0.25 * (1 - factor) + value * factor))
        assert torch.allclose(out, torch.full((1, 2, 2, 3), expected)), factor


def test_image_composite_masked_puts_exact_source_values_at_x_y() -> None:
    dest, src = seeded(1, 10, 10, 3), seeded(1, 3, 4, 3, seed=1)
    out = one("ImageCompositeMasked", destination=dest, source=src, x=5, y=2, resize_source=False)
    assert torch.equal(out[:, 2:5, 5:9], src)
    keep = torch.ones(10, 10, dtype=torch.bool)
    keep[2:5, 5:9] = False
    assert torch.equal(out[:, keep], dest[:, keep])
    clipped = one("ImageCompositeMasked", destination=dest, source=src, x=8, y=9, resize_source=False)
    assert torch.equal(clipped[:, 9:, 8:], src[:, :1, :2])
    mask = torch.zeros(3, 4)
    mask[1] = 1.0
    masked = one("ImageCompositeMasked", destination=dest, source=src, x=0, y=0, resize_source=False, mask=mask)
    assert torch.equal(masked[:, 1, :4], src[:, 1]) and torch.equal(masked[:, 0], dest[:, 0])


def test_empty_image_colour() -> None:
    image = one("EmptyImage", width=3, height=2, batch_size=2, color=0xFF8000)
    assert image.shape == (2, 2, 3, 3)
    assert torch.equal(image[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))


def test_image_scale_sizes_aspect_and_centre_crop() -> None:
    image = seeded(1, 20, 40, 3)
    assert one("ImageScale", image=image, upscale_method="bilinear", width=10, height=30, crop="disabled").shape \
        == (1, 30, 10, 3)
    assert one("ImageScale", image=image, upscale_method="area", width=0, height=10, crop="disabled").shape \
        == (1, 10, 20, 3)
    assert one("ImageScale", image=image, upscale_method="area", width=10, height=0, crop="disabled").shape \
        == (1, 5, 10, 3)
    assert one("ImageScale", image=image, upscale_method="area", width=0, height=0, crop="disabled") is image
    centre = one("ImageScale", image=image, upscale_method="nearest-exact", width=20, height=20, crop="center")
    assert torch.equal(centre, image[:, :, 10:30, :])  # 40×20 → 20×20 keeps the middle columns
    lanczos = one("ImageScale", image=image, upscale_method="lanczos", width=30, height=15, crop="disabled")
    assert lanczos.shape == (1, 15, 30, 3)
    assert torch.equal(lanczos, torch.round(lanczos * 255) / 255)  # through 8-bit Pillow, as ComfyUI
    for method in UPSCALE:
        assert one("ImageScaleBy", image=image, upscale_method=method, scale_by=1.5).shape == (1, 30, 60, 3)


def test_image_scale_to_total_pixels_rounding() -> None:
    image = seeded(1, 32, 64, 3)
    # 0.3.64: budget int(0.01 · 1024²) = 10485 px; scale √(10485 / 2048) = 2.2627 → 145 × 72.
    out = one("ImageScaleToTotalPixels", image=image, upscale_method="bilinear", megapixels=0.01)
    assert out.shape == (1, 72, 145, 3)
    stepped = one("ImageScaleToTotalPixels", image=image, upscale_method="bilinear", megapixels=0.01,
                  resolution_steps=8)
    assert stepped.shape == (1, 72, 144, 3)


def test_image_pad_for_outpaint_grey_border_and_squared_feather_ramp() -> None:
    image = seeded(1, 32, 24, 3)
    padded, mask = call("ImagePadForOutpaint", image=image, left=8, top=0, right=16, bottom=0, feathering=4)
    assert padded.shape == (1, 32, 48, 3) and mask.shape == (32, 48)
    assert torch.equal(padded[:, :, 8:32], image)
    assert torch.equal(padded[:, :, :8], torch.full((1, 32, 8, 3), 0.5))
    assert torch.equal(mask[:, :8], torch.ones(32, 8)) and torch.equal(mask[:, 32:], torch.ones(32, 16))
    inner = mask[:, 8:32]
    # Distance d to a padded side (left: column index; right: 24 - column); value ((4 - d) / 4)² when d < 4.
    left_ramp = torch.tensor([1.0, 0.5625, 0.25, 0.0625])
    right_ramp = torch.tensor([0.0625, 0.25, 0.5625])  # columns 21, 22, 23: d = 3, 2, 1
    assert torch.equal(inner[:, :4], left_ramp.expand(32, 4))
    assert torch.equal(inner[:, 21:], right_ramp.expand(32, 3))
    assert torch.equal(inner[:, 4:21], torch.zeros(32, 17))  # top and bottom are not padded: no ramp there
    _, no_feather = call("ImagePadForOutpaint", image=image, left=8, top=0, right=0, bottom=0, feathering=12)
    assert not no_feather[:, 8:].any()  # 2 · 12 ≥ 24: ComfyUI skips the feather entirely


def test_canny_finds_a_step_edge() -> None:
    image = torch.zeros(1, 32, 32, 3)
    image[:, :, 16:, :] = 1.0
    edges = one("Canny", image=image, low_threshold=0.4, high_threshold=0.8)
    assert edges.shape == (1, 32, 32, 3) and torch.equal(edges[..., 0], edges[..., 2])
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    columns = edges[0, :, :, 0].sum(0)
    assert set(torch.nonzero(columns).flatten().tolist()) <= {15, 16}  # one thin line on the step
    assert columns[15:17].sum() >= 32  # every row has an edge pixel
    assert not one("Canny", image=torch.full((1, 16, 16, 3), 0.5), low_threshold=0.1, high_threshold=0.2).any()


@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.1, 0.2)])
def test_canny_matches_kornia_the_library_comfyui_calls(low: float, high: float) -> None:
    """The fixtures are kornia 0.8.1's `canny` edges of the shipped example image (made once in a private
    environment; kornia is not a dependency): every pixel agrees."""
    example = Path(__file__).parents[2] / "workflows" / "inputs" / "sumi_example.png"
    with Image.open(example) as img:
        image = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
    name = f"canny_kornia081_sumi_example_{round(low * 100):02d}_{round(high * 100):02d}.png"
    with Image.open(FIXTURES / name) as ref:
        expected = torch.from_numpy(np.asarray(ref, dtype=np.float32))
    edges = one("Canny", image=image, low_threshold=low, high_threshold=high)[0, :, :, 0]
    assert expected.sum() > 200 and torch.equal(edges, expected)


# ---------------------------------------------------------------- masks


def test_mask_image_conversions_and_solid_invert_threshold() -> None:
    rgba = seeded(2, 4, 5, 4)
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(one("ImageToMask", image=rgba, channel=channel), rgba[..., index])
    with pytest.raises(ValueError, match="no alpha channel"):
        one("ImageToMask", image=rgba[..., :3], channel="alpha")
    image = one("MaskToImage", mask=rgba[..., 0])
    assert image.shape == (2, 4, 5, 3) and torch.equal(image[..., 2], rgba[..., 0])
    assert one("MaskToImage", mask=torch.ones(4, 5)).shape == (1, 4, 5, 3)
    solid = one("SolidMask", value=0.25, width=5, height=3)
    assert solid.shape == (1, 3, 5) and torch.equal(solid, torch.full((1, 3, 5), 0.25))
    assert torch.equal(one("InvertMask", mask=solid), torch.full((1, 3, 5), 0.75))
    assert torch.equal(one("ThresholdMask", mask=torch.tensor([[0.2, 0.5, 0.51]]), value=0.5),
                       torch.tensor([[0.0, 0.0, 1.0]]))


def dot(size: int = 7) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = 1.0
    return mask


def test_grow_mask_cross_or_square_and_shrinking() -> None:
    cross = one("GrowMask", mask=dot(), expand=1, tapered_corners=True)[0]
    expected = torch.zeros(7, 7)
    expected[3, 2:5] = expected[2:5, 3] = 1.0
    assert torch.equal(cross, expected)
    square = one("GrowMask", mask=dot(), expand=1, tapered_corners=False)[0]
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = 1.0
    assert torch.equal(square, expected)
    diamond = one("GrowMask", mask=dot(), expand=2, tapered_corners=True)[0]
    assert diamond.sum() == 13 and diamond[1, 3] == 1 and diamond[2, 2] == 1 and diamond[1, 2] == 0
    shrunk = one("GrowMask", mask=square[None], expand=-1, tapered_corners=False)
    assert torch.equal(shrunk, dot())
    assert torch.equal(one("GrowMask", mask=dot()[0], expand=0, tapered_corners=True), dot())  # [H,W] accepted


def test_feather_mask_ramps_with_comfyuis_right_and_bottom_indexing() -> None:
    out = one("FeatherMask", mask=torch.ones(1, 2, 8), left=4, top=0, right=0, bottom=0)
    assert torch.equal(out[0, 0], torch.tensor([0.25, 0.5, 0.75, 1, 1, 1, 1, 1]))
    # right = 2: factors 1/2, 2/2 go to columns -0 (= 0, the left edge) and -1, as ComfyUI indexes them.
    right = one("FeatherMask", mask=torch.ones(1, 2, 8), left=0, top=0, right=2, bottom=0)
    assert torch.equal(right[0, 0], torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 1]))
    right4 = one("FeatherMask", mask=torch.ones(1, 2, 8), left=0, top=0, right=4, bottom=0)
    assert torch.equal(right4[0, 0], torch.tensor([0.25, 1, 1, 1, 1, 1, 0.75, 0.5]))
    top = one("FeatherMask", mask=torch.ones(1, 4, 2), left=0, top=2, right=0, bottom=0)
    assert torch.equal(top[0, :, 0], torch.tensor([0.5, 1, 1, 1]))


@pytest.mark.parametrize(("operation", "source", "expected"), [
    ("multiply", [0.25, 0.0], [0.2, 0.0]), ("add", [0.6, 0.0], [1.0, 0.4]), ("subtract", [0.25, 0.0], [0.55, 0.4]),
    ("subtract", [0.9, 0.0], [0.0, 0.4]),
    # the logic operations round first: destination 0.8, 0.4 → 1, 0; source 0.6, 0.2 → 1, 0
    ("and", [0.6, 0.2], [1.0, 0.0]), ("or", [0.6, 0.2], [1.0, 0.0]), ("xor", [0.6, 0.2], [0.0, 0.0]),
    ("xor", [0.2, 0.6], [1.0, 1.0])])
def test_mask_composite_operations_inside_the_region_only(operation: str, source: list[float],
                                                           expected: list[float]) -> None:
    dest = torch.tensor([[[0.8, 0.4, 0.3]]])  # 1×1×3; the source covers columns 0 and 1 only (x = 0)
    out = one("MaskComposite", destination=dest, source=torch.tensor([[source]]), x=0, y=0, operation=operation)
    assert torch.allclose(out[0, 0, :2], torch.tensor(expected)) and out[0, 0, 2] == pytest.approx(0.3)


def test_mask_composite_offsets_and_clipping() -> None:
    dest, source = torch.zeros(1, 6, 6), torch.ones(1, 3, 3)
    out = one("MaskComposite", destination=dest, source=source, x=4, y=1, operation="add")
    expected = torch.zeros(1, 6, 6)
    expected[:, 1:4, 4:6] = 1.0
    assert torch.equal(out, expected)
    outside = one("MaskComposite", destination=dest, source=source, x=50, y=0, operation="add")
    assert torch.equal(outside, dest)


def test_mask_preview_writes_a_grey_png(base: Path, ex: Executor) -> None:
    prompt = {"1": node("SolidMask", value=0.5, width=8, height=4), "2": node("MaskPreview", mask=["1", 0])}
    result, _ = run(ex, prompt)
    [entry] = result.outputs["2"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    with Image.open(base / "temp" / entry["filename"]) as png:
        assert png.size == (8, 4) and np.array_equal(np.asarray(png), np.full((4, 8, 3), 127, np.uint8))


def test_load_image_mask_channels_and_fingerprint(base: Path, ex: Executor) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(base / "input" / "m.png")
    Image.fromarray(pixels[..., :3], "RGB").save(base / "input" / "rgb.png")
    prompt = {f"{i}": node("LoadImageMask", image="m.png", channel=c)
              for i, c in enumerate(["alpha", "red", "green", "blue"], 1)}
    prompt["9"] = node("LoadImageMask", image="rgb.png", channel="alpha")
    for nid in list(prompt):
        prompt[f"p{nid}"] = node("MaskPreview", mask=[nid, 0])
    result, _ = run(ex, prompt)
    values = {nid: result.values[nid][0] for nid in ("1", "2", "3", "4", "9")}
    assert values["1"].shape == (1, 6, 5)
    assert torch.equal(values["1"][0], 1.0 - torch.from_numpy(pixels[..., 3] / np.float32(255)))
    for nid, index in (("2", 0), ("3", 1), ("4", 2)):
        assert torch.equal(values[nid][0], torch.from_numpy(pixels[..., index] / np.float32(255)))
    assert values["9"].shape == (1, 6, 5) and not values["9"].any()  # opaque: nothing masked
    again, _ = run(ex, prompt)
    assert not {"1", "2", "3", "4", "9"} & set(again.ran)
    Image.fromarray(255 - pixels, "RGBA").save(base / "input" / "m.png")
    changed, _ = run(ex, prompt)
    assert {"1", "2", "3", "4"} <= set(changed.ran) and "9" not in changed.ran


# ---------------------------------------------------------------- VAEEncodeForInpaint


class RecordingVAE:
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.pixels = pixels.clone()
        return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)


def test_vae_encode_for_inpaint_greys_masked_pixels_and_grows_the_noise_mask() -> None:
    """On the parity input, the noise mask is the box ComfyUI produced (x 14–45, y 14–50) and exactly the
    pixels where the mask rounds to 1 (x 16–42, y 16–47) are 0.5 grey."""
    with Image.open(FIXTURES / "inpaint_rgba.png") as img:
        array = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array[..., :3])[None]
    mask = 1.0 - torch.from_numpy(array[..., 3])[None]
    vae = RecordingVAE()
    out = one("VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=6)
    expected = torch.zeros(1, 1, 64, 64)
    expected[..., 14:51, 14:46] = 1.0
    assert torch.equal(out["noise_mask"], expected) and out["samples"].shape == (1, 4, 8, 8)
    hole = torch.zeros(64, 64, dtype=torch.bool)
    hole[16:48, 16:43] = True
    assert torch.equal(vae.pixels[0][hole], torch.full((int(hole.sum()), 3), 0.5))
    assert torch.allclose(vae.pixels[0][~hole], pixels[0][~hole], atol=1e-6)
    plain = one("VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=0)
    assert torch.equal(plain["noise_mask"], mask.round()[:, None])


def test_vae_encode_for_inpaint_crops_to_a_multiple_of_8_and_resizes_the_mask(base: Path, ex: Executor) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(base / "input" / "photo.png")
    prompt = {"4": node("CheckpointLoaderSimple", ckpt_name=CKPT), "10": node("LoadImage", image="photo.png"),
              "11": node("SolidMask", value=1.0, width=16, height=16),
              "12": node("VAEEncodeForInpaint", pixels=["10", 0], vae=["4", 2], mask=["11", 0], grow_mask_by=6),
              "13": node("VAEEncode", pixels=["10", 0], vae=["4", 2]),
              "20": node("SaveLatent", samples=["12", 0], filename_prefix="a"),
              "21": node("SaveLatent", samples=["13", 0], filename_prefix="b")}
    result, _ = run(ex, prompt)
    encoded = result.values["12"][0]
    assert encoded["samples"].shape == (1, 4, 5, 8) and encoded["noise_mask"].shape == (1, 1, 40, 64)
    assert torch.equal(encoded["noise_mask"], torch.ones(1, 1, 40, 64))
    # All grey in, so not the plain encoding of the photo.
    assert (encoded["samples"] - result.values["13"][0]["samples"]).abs().max() > 1e-3


# ---------------------------------------------------------------- primitives and validation


def test_primitives_feed_linked_inputs(base: Path, ex: Executor) -> None:
    prompt = {"1": node("PrimitiveInt", value=24), "2": node("PrimitiveFloat", value=0.5),
              "3": node("PrimitiveBoolean", value="true"), "4": node("PrimitiveString", value="prim"),
              "10": node("EmptyImage", width=4, height=4, batch_size=1, color=0),
              "11": node("SaveImage", images=["10", 0], filename_prefix=["4", 0]),
              "5": node("SolidMask", value=["2", 0], width=["1", 0], height=8),
              "6": node("GrowMask", mask=["5", 0], expand=0, tapered_corners=["3", 0]),
              "7": node("MaskPreview", mask=["6", 0])}
    result, _ = run(ex, prompt)
    assert result.values["1"] == (24,) and result.values["3"] == (True,) and result.values["4"] == ("prim",)
    assert result.outputs["11"]["images"][0]["filename"] == "prim_00001_.png"
    assert result.values["6"][0].shape == (1, 8, 24) and torch.equal(result.values["6"][0], torch.full((1, 8, 24), 0.5))


def test_validation_errors_name_node_and_input(base: Path, ex: Executor) -> None:
    prompt = {"1": node("SolidMask", value=1.5, width=8, height=0),
              "2": node("GrowMask", mask=["1", 0], expand=20000, tapered_corners=True),
              "3": node("MaskComposite", destination=["2", 0], source=["1", 0], x=0, y=0, operation="nand"),
              "4": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
              "5": node("Canny", image=["4", 0], low_threshold=0.9, high_threshold=0.5),
              "6": node("ImageBlend", image1=["5", 0], image2=["4", 0], blend_factor=1.5, blend_mode="normal"),
              "7": node("ImageCompositeMasked", destination=["6", 0], source=["1", 0], x=0, y=0, resize_source=False),
              "8": node("PreviewImage", images=["7", 0]), "9": node("MaskPreview", mask=["3", 0])}
    with pytest.raises(ValidationFailed) as info:
        ex.run(prompt)
    errors = {(e.node_id, e.input_name): e for e in info.value.errors}
    assert set(errors) == {("1", "value"), ("1", "height"), ("2", "expand"), ("3", "operation"),
                           ("5", "low_threshold"), ("6", "blend_factor"), ("7", "source")}
    assert errors["1", "value"].type == "value_bigger_than_max" and errors["1", "value"].class_type == "SolidMask"
    assert errors["1", "height"].type == "value_smaller_than_min" and errors["1", "height"].expected == ">= 1"
    assert errors["2", "expand"].expected == "<= 16384"
    assert errors["3", "operation"].type == "value_not_in_list" and "xor" in errors["3", "operation"].expected
    assert errors["7", "source"].type == "return_type_mismatch" and errors["7", "source"].received == "MASK"
    prompt["6"]["inputs"]["blend_factor"] = 0.5
    prompt["1"]["inputs"].update(value=1.0, height=8)
    prompt["2"]["inputs"]["expand"] = 1
    prompt["3"]["inputs"]["operation"] = "and"
    prompt["7"]["inputs"]["source"] = ["4", 0]
    with pytest.raises(ValidationFailed) as info:
        ex.run(prompt)
    [canny] = info.value.errors
    assert (canny.type, canny.node_id, canny.input_name) == ("custom_validation_failed", "5", "low_threshold")


def test_a_tensor_mismatch_at_run_time_is_a_node_error_not_a_crash(base: Path, ex: Executor) -> None:
    prompt = {"1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
              "2": node("ImageToMask", image=["1", 0], channel="alpha"),
              "5": node("MaskPreview", mask=["2", 0])}
    result = ex.run(prompt)  # an RGB image has no alpha channel
    assert result.status == "error"
    assert result.error["node_id"] == "2" and result.error["node_type"] == "ImageToMask"
    assert "no alpha channel" in result.error["exception_message"]
    prompt = {"1": node("SolidMask", value=1.0, width=8, height=8),
              "2": node("GrowMask", mask=["1", 0], expand=1, tapered_corners=True),
              "3": node("ImageBatch", image1=["4", 0], image2=["4", 0]),
              "4": node("MaskToImage", mask=["2", 0]),
              "5": node("MaskComposite", destination=["1", 0], source=["6", 0], x=0, y=0, operation="add"),
              "6": node("ImageToMask", image=["3", 0], channel="red"),
              "7": node("MaskPreview", mask=["5", 0])}
    result = ex.run(prompt)  # a batch of 2 masks cannot be added into a batch of 1
    assert result.status == "error" and result.error["node_id"] == "5"
    assert "must match" in result.error["exception_message"]


def test_resize_image_lanczos_centre_crop_matches_crop_then_resize() -> None:
    image = seeded(1, 16, 32, 3)
    direct = resize_image(image, 8, 8, "lanczos", "center")
    cropped = resize_image(image[:, :, 8:24, :], 8, 8, "lanczos", "disabled")
    assert torch.equal(direct, cropped)


# ---------------------------------------------------------------- shipped example workflows


def shipped(name: str) -> dict[str, Any]:
    import json

    return json.loads((Path(__file__).parents[2] / "workflows" / name).read_text())


def test_outpaint_workflow_keeps_the_picture_and_fills_the_borders(base: Path, ex: Executor) -> None:
    paths.ensure_example_inputs()
    result, _ = run(ex, shipped("outpaint.json"))
    padded, mask = result.values["12"]
    assert padded.shape == (1, 128, 256, 3) and mask.shape == (128, 256)
    encoded = result.values["13"][0]
    assert encoded["samples"].shape == (1, 4, 16, 32) and encoded["noise_mask"].shape == (1, 1, 128, 256)
    sampled = result.values["3"][0]["samples"]
    keep = torch.nn.functional.interpolate(encoded["noise_mask"], size=(16, 32), mode="bilinear")[0, 0] == 0
    assert keep[:, 10:22].all() and not keep[:, :7].any() and not keep[:, 25:].any()
    assert float((sampled - encoded["samples"])[..., keep].abs().max()) <= 1e-5  # the picture's latent is kept
    assert float((sampled - encoded["samples"])[..., ~keep].abs().max()) > 0.1  # the borders are generated
    [saved] = result.outputs["9"]["images"]
    with Image.open(base / "output" / saved["filename"]) as png:
        assert png.size == (256, 128)
    assert result.outputs["14"]["images"][0]["type"] == "temp"


def test_mask_compositing_workflow_pastes_the_subject_latent_inside_the_mask(base: Path, ex: Executor) -> None:
    result, _ = run(ex, shipped("mask_compositing.json"))
    mask = result.values["23"][0]
    assert mask.shape == (1, 256, 256) and mask[0, 160, 128] == 1.0 and mask[0, 0, 0] == 0.0
    # The subject square (x 64–191, y 96–223) fades in over 24 px, and growing by 4 moves the fade outwards.
    profile = mask[0, 160, 56:100]
    assert profile[0] == 0 and profile[-1] == 1 and bool((profile[1:] >= profile[:-1]).all())
    assert mask[0, 160, 61] > 0 and 0 < mask[0, 160, 70] < 1
    background, subject = result.values["3"][0]["samples"], result.values["17"][0]["samples"]
    composite = result.values["25"][0]["samples"]
    weight = torch.nn.functional.interpolate(mask[:, None], size=(32, 32), mode="bilinear")
    assert torch.allclose(composite, subject * weight + background * (1 - weight), atol=1e-6)
    assert torch.equal(composite[..., 0, 0], background[..., 0, 0])
    assert result.values["8"][0].shape == (1, 256, 256, 3)
    assert [e["filename"] for e in result.outputs["9"]["images"]] == ["mask_compositing_00001_.png"]


def test_editor_format_graph_of_tool_nodes_converts_and_runs(base: Path, ex: Executor) -> None:
    """As the editor saves them: LoadImageMask's trailing upload value, PrimitiveInt's control value, a widget
    converted to an input and fed by a primitive."""
    from executor.ui_format import ui_to_api

    Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(
        base / "input" / "photo.png")

    def ui(nid: int, kind: str, values: list[Any], inputs: tuple[tuple[str, str, int], ...] = ()) -> dict[str, Any]:
        return {"id": nid, "type": kind, "mode": 0, "widgets_values": values,
                "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs]}

    graph = {"nodes": [
        ui(1, "LoadImage", ["photo.png", "image"]),
        ui(2, "LoadImageMask", ["photo.png", "red", "image"]),
        ui(3, "PrimitiveInt", [24, "fixed"]),
        ui(4, "ImageScale", ["nearest-exact", 512, 8, "disabled"],
           (("image", "IMAGE", 10), ("width", "INT", 11))),
        ui(5, "ImagePadForOutpaint", [8, 0, 0, 0, 2], (("image", "IMAGE", 12),)),
        ui(6, "GrowMask", [1, False], (("mask", "MASK", 13),)),
        ui(7, "PreviewImage", [], (("images", "IMAGE", 14),)),
        ui(8, "MaskPreview", [], (("mask", "MASK", 15),)),
    ], "links": [[10, 1, 0, 4, 0, "IMAGE"], [11, 3, 0, 4, 1, "INT"], [12, 4, 0, 5, 0, "IMAGE"],
                 [13, 2, 0, 6, 0, "MASK"], [14, 5, 0, 7, 0, "IMAGE"], [15, 6, 0, 8, 0, "MASK"]]}
    api, errors = ui_to_api(graph, REGISTRY)
    assert errors == []
    assert api["2"]["inputs"] == {"image": "photo.png", "channel": "red"}
    assert api["3"]["inputs"] == {"value": 24}
    assert api["4"]["inputs"] == {"image": ["1", 0], "upscale_method": "nearest-exact", "width": ["3", 0],
                                  "height": 8, "crop": "disabled"}
    assert api["5"]["inputs"]["feathering"] == 2 and api["6"]["inputs"]["tapered_corners"] is False
    result, _ = run(ex, api)
    assert result.values["4"][0].shape == (1, 8, 24, 3)
    assert result.values["5"][0].shape == (1, 8, 32, 3)
    assert result.values["6"][0].shape == (1, 16, 16)


def test_comfyuis_mask_compositing_template_runs_unchanged(base: Path, ex: Executor) -> None:
    """ComfyUI's own template (tests/fixtures/templates/README.md), converted from the editor format as saved."""
    import json

    from executor.ui_format import ui_to_api

    graph = json.loads((FIXTURES / "templates" / "basic_mask_operations_and_compositing.json").read_text())
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(
        base / "input" / "example.png")  # ComfyUI ships an example.png in its input folder
    api, errors = ui_to_api(graph, REGISTRY)
    assert errors == []
    result, _ = run(ex, api)
    previews = [nid for nid, spec in api.items() if spec["class_type"] in ("MaskPreview", "PreviewImage")]
    assert len(previews) == 18 and set(previews) <= set(result.outputs)
    # 383: a 0.5 canvas (1024²) plus a 512² square of 1 at (128, 128); 398: the same square at (512, 512).
    square_a, square_b = result.values["383"][0][0], result.values["398"][0][0]
    assert (float(square_a[200, 200]), float(square_a[10, 10]), float(square_b[900, 900])) == (1.0, 0.5, 1.0)
    # 376 multiplies 398 into 383 at (256, 256): inside A × B's 0.5 border, B's corner square × A's 0.5.
    product = result.values["376"][0][0]
    assert [float(product[y, x]) for y, x in ((10, 10), (300, 300), (700, 700), (900, 900))] == [0.5, 0.5, 0.25, 0.5]
    # 387 "and" rounds first (0.5 rounds to 0): the two squares never overlap there, so the region is 0.
    both = result.values["387"][0][0]
    assert not both[256:, 256:].any() and float(both[200, 200]) == 1.0 and float(both[10, 10]) == 0.5
    summed = result.values["400"][0][0]
    assert (float(summed[300, 300]), float(summed[700, 700])) == (1.0, 1.0)
    # 394 feathers 383 by 40 px on every side; 359 pastes a red image over black through that mask.
    feathered = result.values["394"][0][0]
    assert float(feathered[500, 10]) == pytest.approx(0.5 * 11 / 40)
    assert float(feathered[0, 0]) == pytest.approx(0.5 / 40**4)  # ComfyUI's −0 indexing: four ramps meet there
    composite = result.values["359"][0]
    assert composite.shape == (1, 1024, 1024, 3)
    assert torch.allclose(composite[0, 300, 300], torch.tensor([1.0, 0.0, 0.0]))
    assert float(composite[0, 500, 10, 0]) == pytest.approx(0.5 * 11 / 40) and float(composite[0, 500, 10, 1]) == 0.0
