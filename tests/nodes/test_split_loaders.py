"""Split files (UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader): a checkpoint split into its diffusion model,
text encoders (transformers layout) and VAE gives exactly the image the single file gives, for SD1.x, SD2.x and
SDXL; the loaders detect the family from each file alone; fp8 weight dtypes and fp8-stored files give the
fp8-rounded image; a file of another kind, an unsupported type or a dtype Sumi cannot read is a validation error
on that input, naming what the file appears to be."""
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


def _fp8_copy(src: Path, dst: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(src).items()}, dst)


def test_fp8_weights_and_fp8_files_give_the_fp8_rounded_image(base: Path) -> None:
    """weight_dtype fp8 rounds every weight to fp8 (held upcast on this CPU); a file stored in fp8 (safetensors
    F8_E4M3 / F8_E5M2) loads with weight_dtype default into exactly those weights, so both give one image, which
    differs from the fp16 file's only by the rounding."""
    stem = Path(NAMES["sd15"]).stem
    folder = base / "models" / "diffusion_models"
    for dtype, tag in ((torch.float8_e4m3fn, "e4m3"), (torch.float8_e5m2, "e5m2")):
        _fp8_copy(folder / f"{stem}_unet.safetensors", folder / f"{stem}_unet_{tag}.safetensors", dtype)

    def graph(unet: str, weight_dtype: str, seed: int = 3) -> dict:
        g = _graph(["11", 0], ["1", 1], ["1", 2], {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES["sd15"]}},
            "11": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}}})
        g["3"]["inputs"]["seed"] = seed
        return g

    ex = Executor(build_registry())
    runs = {label: ex.run(graph(f"{stem}_unet{suffix}.safetensors", weight_dtype)) for label, suffix, weight_dtype in (
        ("fp16", "", "default"), ("e4m3", "", "fp8_e4m3fn"), ("e4m3_fast", "", "fp8_e4m3fn_fast"),
        ("e4m3_file", "_e4m3", "default"), ("e5m2", "", "fp8_e5m2"), ("e5m2_file", "_e5m2", "default"))}
    assert all(r.status == "success" for r in runs.values()), [r.error for r in runs.values()]
    img = {label: r.values["8"][0] for label, r in runs.items()}
    assert torch.equal(img["e4m3"], img["e4m3_file"]) and torch.equal(img["e4m3"], img["e4m3_fast"])
    assert torch.equal(img["e5m2"], img["e5m2_file"]) and not torch.equal(img["e4m3"], img["e5m2"])
    # within the rounding: measured mean |diff| 0.0075 (e4m3) and 0.011 (e5m2), where another seed moves 0.167
    other_seed = ex.run(graph(f"{stem}_unet.safetensors", "default", seed=4)).values["8"][0]
    spread = float((other_seed - img["fp16"]).abs().mean())
    for label in ("e4m3", "e5m2"):
        diff = float((img[label] - img["fp16"]).abs().mean())
        assert 0 < diff < 0.1 * spread, (label, diff, spread)
    from safetensors.torch import load_file

    want = load_file(folder / f"{stem}_unet.safetensors")["input_blocks.0.0.weight"]
    unet = runs["e5m2"].values["11"][0].unet
    assert unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(unet.conv_in.weight, want.to(torch.float8_e5m2).float())


def test_wrong_files_types_and_dtypes_are_validation_errors(base: Path) -> None:
    stem = Path(NAMES["sdxl"]).stem
    (base / "models" / "diffusion_models" / "a_vae.safetensors").write_bytes(
        (base / "models" / "vae" / f"{stem}_vae.safetensors").read_bytes())
    prompt = _graph(["11", 0], ["12", 0], ["13", 0], {
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": "a_vae.safetensors", "weight_dtype": "default"}},
        "12": {"class_type": "CLIPLoader", "inputs": {"clip_name": f"{stem}_clip_g.safetensors", "type": "sd3"}},
        "13": {"class_type": "VAELoader", "inputs": {"vae_name": f"{stem}_vae.safetensors"}}})
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    by = {(e.node_id, e.input_name): e.message for e in info.value.errors}
    assert "sd3" in by[("12", "type")]
    prompt["12"]["inputs"]["type"] = "stable_diffusion"
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    by = {(e.node_id, e.input_name): e.message for e in info.value.errors}
    assert "no UNet in the original layout" in by[("11", "unet_name")]
    assert "supported: SD1.x, SD2.x, SDXL and SDXL refiner diffusion models (the UNet alone" in by[("11", "unet_name")]
    assert "single-file checkpoints" not in by[("11", "unet_name")]  # this loader's files, not Load Checkpoint's
    result = Executor(build_registry()).run({**prompt, "11": {"class_type": "UNETLoader", "inputs": {
        "unet_name": f"{stem}_unet.safetensors", "weight_dtype": "default"}}})
    # the bigG file read as an SD2 encoder: the sampler refuses conditioning of the wrong width, saying why
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "does not fit this sdxl model" in result.error["exception_message"]


def test_a_file_in_a_dtype_sumi_cannot_read_is_a_validation_error(base: Path) -> None:
    """safetensors files can hold dtypes torch reads but Sumi does not (MX scales F8_E8M0, packed F4): the
    header names them, so validation says which tensor and which dtype."""
    import json
    import struct

    header = {"input_blocks.0.0.weight": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]}}
    blob = json.dumps(header).encode()
    path = base / "models" / "diffusion_models" / "mx.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0\0")
    from nodes.loaders import UNETLoader

    error = UNETLoader.check("mx.safetensors", "default")["unet_name"]
    assert "'input_blocks.0.0.weight' is stored as F8_E8M0" in error and "F8_E4M3" in error


def _clip_files(base: Path) -> dict[str, str]:
    from tests.nodes import foreign_files

    folder = base / "models" / "text_encoders"
    for kind in foreign_files.BUILDERS:
        if not (folder / f"{kind}.safetensors").exists():
            foreign_files.write(kind, folder / f"{kind}.safetensors")
    stem = Path(NAMES["sdxl"]).stem
    return {"clip_l": f"{stem}_clip_l.safetensors", "clip_g": f"{stem}_clip_g.safetensors",
            **{k: f"{k}.safetensors" for k in foreign_files.BUILDERS}}


CLIP_CASES = [  # (node, files, type, {input: phrases its error must hold}); {} = valid
    ("CLIPLoader", ["clip_l"], "stable_diffusion", {}),
    ("DualCLIPLoader", ["clip_l", "clip_g"], "sdxl", {}),
    ("CLIPLoader", ["t5"], "sd3", {"type": ["'sd3' is for SD3 / SD3.5", "t5.safetensors appears to be a T5 text "
                                            "encoder", "Sumi loads type stable_diffusion"]}),
    ("CLIPLoader", ["clip_l"], "sd3", {"type": ["appears to be a CLIP-L text encoder (32 wide)"]}),
    ("CLIPLoader", ["umt5"], "wan", {"type": ["'wan' is for Wan", "appears to be a UMT5 text encoder"]}),
    ("CLIPLoader", ["qwen"], "qwen_image", {"type": ["'qwen_image' is for Qwen-Image", "decoder-only language"]}),
    ("DualCLIPLoader", ["clip_l", "t5"], "flux", {"type": ["'flux' is for Flux", "clip_l.safetensors appears to be "
                                                           "a CLIP-L", "t5.safetensors appears to be a T5"]}),
    ("CLIPLoader", ["t5"], "stable_diffusion", {"clip_name": ["this is a T5 text encoder", "not a CLIP text encoder"]}),
    ("CLIPLoader", ["clip_vision"], "stable_diffusion", {"clip_name": ["a CLIP vision (image) encoder"]}),
    ("DualCLIPLoader", ["clip_l", "umt5"], "sdxl", {"clip_name2": ["this is a UMT5 text encoder"]}),
]


@pytest.mark.parametrize(("node", "files", "clip_type", "want"), CLIP_CASES,
                         ids=[f"{c[0]}-{c[2]}-{'+'.join(c[1])}" for c in CLIP_CASES])
def test_clip_types_and_foreign_text_encoders(base: Path, node: str, files: list[str], clip_type: str,
                                              want: dict[str, list[str]]) -> None:
    """ComfyUI's type options all validate in shape; a type Sumi cannot run, or a file that is no CLIP text
    encoder, is a validation error on that input naming the type's family, what each file appears to be (by its
    tensor names) and what Sumi loads."""
    names = _clip_files(base)
    fields = ["clip_name"] if node == "CLIPLoader" else ["clip_name1", "clip_name2"]
    inputs = {f: names[k] for f, k in zip(fields, files, strict=True)} | {"type": clip_type}
    prompt = _graph(["1", 0], ["12", 0], ["1", 2], {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAMES["sdxl"]}},
        "12": {"class_type": node, "inputs": inputs}})
    errors: dict[str, str] = {}
    try:
        Executor(build_registry()).prepare(prompt)
    except ValidationFailed as e:
        errors = {err.input_name: err.message for err in e.errors if err.node_id == "12"}
        assert all(err.node_id == "12" and err.class_type == node for err in e.errors), e.errors
    assert set(errors) == set(want), errors
    for field, phrases in want.items():
        for phrase in phrases:
            assert phrase in errors[field], (phrase, errors[field])


def test_every_comfyui_clip_type_is_listed_and_the_unrunnable_ones_are_named() -> None:
    from nodes.loaders import CLIP_LOADER_TYPES, CLIP_TYPE_FAMILIES, DUAL_CLIP_TYPES, CLIPLoader, DualCLIPLoader

    reference = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                 "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]
    assert CLIP_LOADER_TYPES[:len(reference)] == reference  # shared/reference/comfyui.md §5, in its order
    assert DUAL_CLIP_TYPES == ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
    for node, types in ((CLIPLoader, CLIP_LOADER_TYPES), (DualCLIPLoader, DUAL_CLIP_TYPES)):
        assert node.inputs[[i.name for i in node.inputs].index("type")].options == types
        for t in set(types) - set(models.CLIP_TYPES):
            assert t in CLIP_TYPE_FAMILIES
            names = {"clip_name": "x.safetensors"} if node is CLIPLoader else {"clip_name1": "x", "clip_name2": "y"}
            assert f"{t!r} is for {CLIP_TYPE_FAMILIES[t]}" in node.check(type=t, **names)["type"]


@pytest.mark.parametrize(("node", "field", "name", "detector"), [
    ("UNETLoader", "unet_name", "sumi_tiny_sd15_unet.safetensors", "detect_diffusion_model"),
    ("VAELoader", "vae_name", "sumi_tiny_sd15_vae.safetensors", "detect_vae"),
    ("CLIPLoader", "clip_name", "sumi_tiny_sd15_clip_l.safetensors", "detect_text_encoder"),
])
def test_a_detector_that_trips_over_a_file_is_a_validation_error_naming_it(
        base: Path, monkeypatch: pytest.MonkeyPatch, node: str, field: str, name: str, detector: str) -> None:
    """A half-recognised layout can make a detector raise KeyError/IndexError: that is reported on the input,
    naming the file, never raised out of validation."""
    from nodes.diffusion import detect

    def trips(*_: object) -> None:
        raise KeyError("down_blocks.0.resnets.0.conv1.weight")

    monkeypatch.setattr(detect, detector, trips)
    inputs = {field: name, **({"type": "stable_diffusion"} if node == "CLIPLoader" else {}),
              **({"weight_dtype": "default"} if node == "UNETLoader" else {})}
    problems = build_registry().get(node).check(**inputs)
    assert list(problems) == [field]
    assert problems[field].startswith(f"{name}: its tensors look like a known layout but do not fit it (KeyError: ")
    assert "down_blocks.0.resnets.0.conv1.weight" in problems[field]
