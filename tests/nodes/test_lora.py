"""LoRA as patches over shared weights, on the tiny models.

Proves: every module of a kohya and of a diffusers/PEFT LoRA built for the tiny SD1.5, SD2 and SDXL models finds
its weight (kohya with alpha/rank, PEFT without), and the patched weight is W + s·scale·up@down exactly; the cached
base model is never left patched (weights bit-identical after a LoRA run, errors included); LoRA on, off, on gives
identical images to the earlier runs and the loader and checkpoint are not re-run (cached); strength 0 is a
pass-through; text encoder patches are rounded to fp16 (ComfyUI's text weight precision); a file without LoRA pairs
is refused naming what it holds; unknown keys are reported as ComfyUI reports them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from executor.runner import Executor
from nodes import build_registry, models
from nodes.diffusion import fixtures as F
from nodes.diffusion import lora
from nodes.diffusion.patches import patched
from nodes.diffusion.reading import CheckpointError
from nodes.loaders import apply_lora

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_every_module_of_a_tiny_lora_finds_its_weight(base: Path, family: str, fmt: str) -> None:
    ckpt = models.ensure_default_checkpoint({"sd15": "sumi_tiny_sd15.safetensors", "sd2": "sumi_tiny_sd2.safetensors",
                                              "sdxl": "sumi_tiny_sdxl.safetensors"}[family])
    model, clip, _ = models.load(ckpt)
    path = base / f"{family}_{fmt}.safetensors"
    F.write_lora_by_rule(path, F.tiny_lora_layout(family, fmt))
    sd = load_file(path)
    modules, extra = lora.parse(sd)
    assert not extra
    (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    (base / "models" / "loras" / path.name).write_bytes(path.read_bytes())
    patched_model, patched_clip = apply_lora(model, clip, path.name, 0.8, 0.6)
    n_unet, n_text = len(patched_model.patches), sum(len(e.patches) for e in patched_clip.encoders.values())
    assert n_unet + n_text == len(modules) and n_unet > 0 and n_text > 0
    # one patch, checked against the formula
    patch = patched_model.patches[0]
    name = next(n for n, m in modules.items() if torch.equal(m.delta(), patch.delta()))
    rank = modules[name].down.shape[0]
    scale = (2.0 / rank) if fmt == "kohya" else 1.0
    assert patch.strength == pytest.approx(0.8 * scale)
    w = dict(model.unet.named_parameters())[patch.key]
    before = w.detach().clone()
    want = before + (0.8 * scale * modules[name].delta()).reshape(w.shape)
    with patched_model.patched():
        got = dict(model.unet.named_parameters())[patch.key].detach().clone()
    assert torch.allclose(got, want, atol=1e-6) and torch.equal(w, before)
    assert model.patches == () and all(not e.patches for e in clip.encoders.values())


def test_text_patches_are_rounded_to_fp16(base: Path) -> None:
    _, clip, _ = models.load(models.ensure_default_checkpoint())
    _, view = apply_lora(None, clip, "sumi_tiny_sd15_lora_kohya.safetensors", 0.0, 0.37)
    enc = view.encoders["clip_l"]
    key = enc.patches[0].key
    original = dict(enc.model.named_parameters())[key].detach().clone()
    with patched(enc.model, enc.patches):
        w = dict(enc.model.named_parameters())[key].detach().clone()
    assert torch.equal(w, w.half().float()) and not torch.equal(w, original)
    assert torch.equal(dict(enc.model.named_parameters())[key], original)


def _prompt(lora_on: bool, strength: float = 0.8) -> dict:
    prompt = json.loads((REPO / "workflows" / "lora.json").read_text())
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"]["steps"] = 3
    prompt["10"]["inputs"]["strength_model"] = strength
    if not lora_on:
        for node in ("6", "7"):
            prompt[node]["inputs"]["clip"] = ["4", 1]
        prompt["3"]["inputs"]["model"] = ["4", 0]
        del prompt["10"]
    return prompt


def test_lora_on_off_on_is_identical_and_never_reloads(base: Path) -> None:
    ex = Executor(build_registry())
    on1 = ex.run(_prompt(True))
    assert on1.status == "success", on1.error
    unet = on1.values["4"][0].unet
    weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    off = ex.run(_prompt(False))
    on2 = ex.run(_prompt(True))
    assert off.status == on2.status == "success"
    assert "4" in off.cached and {"4", "10"} <= set(on2.cached)  # neither the checkpoint nor the LoRA re-ran
    assert all(torch.equal(weights[k], v) for k, v in unet.state_dict().items())  # base never left patched
    plain = Executor(build_registry()).run(_prompt(False))
    a, b = off.values["3"][0]["samples"], plain.values["3"][0]["samples"]
    assert torch.equal(a, b)  # the run without the LoRA is exactly a fresh process's
    lat_on1, lat_on2 = on1.values["3"][0]["samples"], ex.run(_prompt(True, 0.81)).values["3"][0]["samples"]
    assert not torch.equal(lat_on1, a) and not torch.equal(lat_on1, lat_on2)  # the LoRA and its strength act
    image_on1 = on1.values["8"][0]
    fresh_on = Executor(build_registry()).run(_prompt(True))
    assert torch.equal(fresh_on.values["8"][0], image_on1)  # on after off: the same image as the first time


def test_zero_strengths_pass_through(base: Path) -> None:
    from nodes.loaders import LoraLoader, LoraLoaderModelOnly

    model, clip, _ = models.load(models.ensure_default_checkpoint())
    assert LoraLoader().run(None, model, clip, "sumi_tiny_sd15_lora_kohya.safetensors", 0.0, 0.0) == (model, clip)
    assert LoraLoaderModelOnly().run(None, model, "sumi_tiny_sd15_lora_kohya.safetensors", 0.0) == (model,)


def test_model_only_reports_the_text_keys_it_skips(base: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, _, _ = models.load(models.ensure_default_checkpoint())
    from nodes.loaders import LoraLoaderModelOnly

    with caplog.at_level(logging.WARNING, logger="sumi.lora"):
        (view,) = LoraLoaderModelOnly().run(None, model, "sumi_tiny_sd15_lora_kohya.safetensors", 1.0)
    skipped = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert view.patches and skipped and all("lora_te_" in m for m in skipped)


def test_a_file_without_lora_pairs_is_refused(base: Path) -> None:
    (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.zeros(4, 32)}, str(base / "models" / "loras" / "not_a_lora.safetensors"))
    model, clip, _ = models.load(models.ensure_default_checkpoint())
    with pytest.raises(CheckpointError, match="no LoRA up/down"):
        apply_lora(model, clip, "not_a_lora.safetensors", 1.0, 1.0)


def test_a_lora_for_another_family_is_a_mismatch(base: Path) -> None:
    (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
    path = base / "models" / "loras" / "wrong.safetensors"
    layout = F.tiny_lora_layout("sd15", "kohya")
    layout = {k: ([v[0], v[1] * 2] if k.endswith("lora_down.weight") and len(v) == 2 else v) for k, v in layout.items()}
    F.write_lora_by_rule(path, layout)
    model, clip, _ = models.load(models.ensure_default_checkpoint())
    with pytest.raises(CheckpointError, match="does not fit"):
        apply_lora(model, clip, "wrong.safetensors", 1.0, 1.0)
