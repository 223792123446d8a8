"""Sampling previews: the latent2rgb projection, the --preview-method flag, and that only a host that asked pays.

Proves: latent2rgb applies the SD1.x 4×3 factors to the first batch item and maps [-1, 1] to 0..255, fitting
large latents into 512 px; `serve --preview-method` takes none|auto|latent2rgb|taesd (default auto) and `none`
turns previews off; `auto` and `taesd` decode with the family's TAESD decoder file when models/vae_approx has it
(full-size previews equal to the TAESD VAE's decode), else fall back to latent2rgb (`taesd` warns); a CLI run
(`main.main(["run", …])`, in-process) never calls the preview function, while the same workflow on an Executor
with previews on calls it once per sampler step and emits `preview` events.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import main
from executor.runner import Executor
from nodes import build_registry, devices, models, paths, preview

REPO = Path(__file__).resolve().parent.parent
STEPS = 2


def test_latent_to_rgb_applies_the_sd15_factors_per_channel() -> None:
    latent = torch.zeros(2, 4, 3, 5)
    for channel in range(4):
        latent[0, channel, channel % 3, channel] = 1.0  # one pixel lit per channel, in the first item
    latent[1] = 5.0  # the second batch item is ignored
    image = preview.latent_to_rgb(latent)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (5, 3)
    for channel, row in enumerate(preview.SD15_RGB_FACTORS):
        expected = tuple(round((value + 1.0) / 2.0 * 255) for value in row)
        assert image.getpixel((channel, channel % 3)) == expected
    assert image.getpixel((4, 2)) == (128, 128, 128)  # a zero latent is mid-gray ((0 + 1) / 2 → 127.5)


def test_latent_to_rgb_clamps_fits_and_refuses_other_latent_shapes() -> None:
    saturated = preview.latent_to_rgb(torch.full((4, 2, 2), 100.0))
    assert saturated is not None
    r, g, b = (0.3512 + 0.3250 - 0.2829 - 0.2120, 0.2297 + 0.4974 + 0.1762 - 0.2616, 0.3227 + 0.2350 + 0.2721 - 0.7177)
    assert saturated.getpixel((0, 0)) == tuple(255 if v > 0 else 0 for v in (r, g, b))
    big = preview.latent_to_rgb(torch.randn(1, 4, 1024, 256))
    assert big is not None and big.size == (128, 512)  # fitted into PREVIEW_SIZE, aspect kept
    assert preview.latent_to_rgb(torch.randn(1, 16, 8, 8)) is None  # not an SD1.x latent


def test_preview_methods() -> None:
    assert [preview.enabled(m) for m in ("none", "auto", "latent2rgb", "taesd")] == [False, True, True, True]
    with pytest.raises(ValueError, match="taesd"):
        preview.enabled("vae")
    parser = main.build_parser()
    assert parser.parse_args(["serve"]).preview_method is None  # unset: previews only for clients that ask
    assert parser.parse_args(["serve", "--preview-method", "none"]).preview_method == "none"
    assert parser.parse_args(["serve", "--preview-method", "taesd"]).preview_method == "taesd"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--preview-method", "vae"])
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "x.json", "--preview-method", "auto"])  # a serve flag only


@pytest.fixture
def base(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A base directory with the tiny checkpoint; process-wide folders and device policy restored after."""
    monkeypatch.setattr(paths, "FOLDERS", paths.FOLDERS)
    monkeypatch.setattr(devices, "POLICY", devices.POLICY)
    paths.configure(tmp_path_factory.mktemp("tiny_checkpoint"))
    checkpoint = models.ensure_default_checkpoint()
    root = tmp_path / "base"
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    return root


def small_txt2img() -> dict[str, Any]:
    prompt = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"].update(seed=3, steps=STEPS)
    return prompt


def test_a_cli_run_never_computes_a_preview(base: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[int, ...]] = []
    real = preview.latent_to_rgb

    def spy(x0: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(x0.shape))
        return real(x0, *args, **kwargs)

    monkeypatch.setattr(preview, "latent_to_rgb", spy)
    workflow = base / "txt2img.json"
    workflow.write_text(json.dumps(small_txt2img()))
    status = main.main(["run", str(workflow), "--json", "--threads", "1", "--base-directory", str(base)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2]  # the sampler did run
    assert calls == []
    assert not any(e["type"] == "preview" for e in events)

    # The same workflow on an executor that wants previews: one per step, from the sampler's x0 estimate.
    emitted: list[Any] = []
    result = Executor(build_registry(), previews=True).run(small_txt2img(), on_event=emitted.append)
    assert result.status == "success"
    assert calls == [(1, 4, 8, 8)] * STEPS
    shown = [e.data for e in emitted if e.type == "preview"]
    assert [(d["node"], d["image"].size, d["image"].mode) for d in shown] == [("3", (8, 8), "RGB")] * STEPS
    assert [e.type for e in emitted if e.type in ("progress", "preview")] == ["progress", "preview"] * STEPS


def test_taesd_previews_decode_full_size_with_the_familys_decoder_file(
        base: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nodes.diffusion.fixtures import build_tiny_taesd
    from nodes.diffusion.taesd import load_taesd

    monkeypatch.setattr(preview, "METHOD", preview.METHOD)
    monkeypatch.setattr(preview, "_decoders", {})
    monkeypatch.setattr(preview, "_warned", set())
    paths.configure(base)
    approx = base / "models" / "vae_approx"
    approx.mkdir(parents=True)
    taesd_run = Executor(build_registry(), previews=True)

    def previews() -> list[Any]:
        emitted: list[Any] = []
        assert taesd_run.run(small_txt2img(), on_event=emitted.append).status == "success"
        taesd_run.cache.clear()
        return [e.data["image"] for e in emitted if e.type == "preview"]

    # taesd asked for, no decoder file: latent2rgb's latent-sized images, and one warning naming the file
    preview.configure("taesd")
    with caplog.at_level("WARNING", logger="nodes.preview"):
        assert [im.size for im in previews()] == [(8, 8)] * STEPS
        assert [im.size for im in previews()] == [(8, 8)] * STEPS
    assert [r.getMessage() for r in caplog.records].count(
        "TAESD previews asked for, but models/vae_approx has no taesd_decoder file; using latent2rgb") == 1

    # an SDXL decoder does not decode SD1.x latents: still latent2rgb under auto
    build_tiny_taesd(tmp_path / "xl_encoder.safetensors", approx / "taesdxl_decoder.safetensors", seed=5)
    preview.configure("auto")
    assert [im.size for im in previews()] == [(8, 8)] * STEPS

    # the SD1.x decoder alone (no encoder, as ComfyUI users install it): full-size images from that decoder
    encoder = tmp_path / "taesd_encoder.safetensors"
    build_tiny_taesd(encoder, approx / "taesd_decoder.safetensors", seed=7)
    x0s: list[torch.Tensor] = []
    real = preview._decode_taesd

    def spy(decoder: Any, x0: torch.Tensor, size: int) -> Any:
        x0s.append(x0.clone())
        return real(decoder, x0, size)

    monkeypatch.setattr(preview, "_decode_taesd", spy)
    shown = previews()
    assert [im.size for im in shown] == [(64, 64)] * STEPS and len(x0s) == STEPS
    full = load_taesd(encoder, approx / "taesd_decoder.safetensors")
    for image, x0 in zip(shown, x0s, strict=True):
        with torch.inference_mode():
            want = ((full.decode(x0[:1], return_dict=False)[0][0] + 1) / 2).clamp(0, 1).movedim(0, -1)
        got = torch.from_numpy(np.array(image)).float() / 255
        assert (got - want).abs().max() <= 0.5 / 255 + 1e-6
    assert float(torch.from_numpy(np.array(shown[-1])).float().std()) > 1.0  # an image, not a flat fill

    # a prompt's own kind (`Executor.execute(previews=…)`, from extra_data.preview_method) wins over the server's
    def sizes(kind: str) -> list[tuple[int, int]]:
        emitted: list[Any] = []
        prompt = small_txt2img()
        run = taesd_run.execute(taesd_run.prepare(prompt), prompt, on_event=emitted.append, previews=kind)
        assert run.status == "success"
        taesd_run.cache.clear()
        return [e.data["image"].size for e in emitted if e.type == "preview"]

    assert sizes("latent2rgb") == [(8, 8)] * STEPS
    preview.configure("latent2rgb")
    assert sizes("taesd") == [(64, 64)] * STEPS
    assert sizes("auto") == [(64, 64)] * STEPS
