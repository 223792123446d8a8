"""TAESD in VAELoader: the original halves (madebyollin's `nn.Sequential` state dicts) load into diffusers'
AutoencoderTiny and decode/encode exactly as the original architecture, written out here from its publication,
does on the same files; VAEDecode / VAEEncode apply each family's latent scale (SD1.x 0.18215, SDXL 0.13025);
the pseudo-names are listed only when both halves exist; SD3/Flux TAESDs and broken halves are validation errors
naming what they are."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from executor.errors import ValidationFailed
from executor.runner import Executor
from nodes import build_registry, models, paths
from nodes.diffusion.reading import CheckpointError
from nodes.diffusion.taesd import detect_taesd, load_taesd
from nodes.loaders import VAELoader


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n, n, 3, padding=1))
        self.skip, self.fuse = nn.Identity(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _conv(a: int, b: int, **kw: object) -> nn.Conv2d:
    return nn.Conv2d(a, b, 3, padding=1, **kw)


def reference_encoder(c: int = 64, latent: int = 4) -> nn.Sequential:
    """TAESD's encoder as published: image in 0..1 -> scaled latent."""
    down = [[_conv(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c)] for _ in range(3)]
    return nn.Sequential(_conv(3, c), _Block(c), *(m for stage in down for m in stage), _conv(c, latent))


def reference_decoder(c: int = 64, latent: int = 4) -> nn.Sequential:
    """TAESD's decoder as published: scaled latent -> image in 0..1 (before clamping)."""
    up = [[_Block(c), _Block(c), _Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False)] for _ in range(3)]
    return nn.Sequential(_Clamp(), _conv(latent, c), nn.ReLU(), *(m for stage in up for m in stage), _Block(c),
                         _conv(c, 3))


def _reference(files: tuple[Path, Path]) -> tuple[nn.Module, nn.Module]:
    enc, dec = reference_encoder(), reference_decoder()
    enc.load_state_dict({k: v.float() for k, v in load_file(files[0]).items()}, strict=True)
    dec.load_state_dict({k: v.float() for k, v in load_file(files[1]).items()}, strict=True)
    return enc.eval(), dec.eval()


def test_original_halves_load_into_autoencoder_tiny_and_match_the_original_architecture(base: Path) -> None:
    files = models.ensure_tiny_taesd("sumi_tiny_taesd")
    assert [f.name for f in files] == ["sumi_tiny_taesd_encoder.safetensors", "sumi_tiny_taesd_decoder.safetensors"]
    enc, dec = _reference(files)  # strict: the tiny files have exactly the original names and shapes
    assert detect_taesd(load_file(files[1]), "decoder").blocks == (3, 3, 3, 1)
    assert detect_taesd(load_file(files[0]), "encoder").blocks == (1, 3, 3, 3)
    tiny = load_taesd(*files)
    g = torch.Generator().manual_seed(0)
    latent, image = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        assert torch.allclose((tiny.decode(latent).sample + 1) / 2, dec(latent), atol=1e-5)
        assert torch.allclose(tiny.encode(image * 2 - 1).latents, enc(image), atol=1e-5)


@pytest.mark.parametrize(("name", "scale"), [("sumi_tiny_taesd", 0.18215), ("sumi_tiny_taesdxl", 0.13025)])
def test_vae_decode_and_encode_use_the_familys_scale(base: Path, name: str, scale: float) -> None:
    enc, dec = _reference(models.ensure_tiny_taesd(name))
    (vae,) = VAELoader().run(None, name)
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(1, 4, 8, 8, generator=g) * 4  # unscaled VAE space, as LATENT holds it
    prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": name}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
              "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 0]}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
              "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 0]}},
              "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}}
    result = Executor(build_registry()).run(prompt)
    assert result.status == "success", result.error
    with torch.no_grad():
        pixels = result.values["3"][0]
        assert torch.allclose(result.values["4"][0]["samples"], enc(pixels.movedim(-1, 1)) / scale, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(vae.decode(samples), dec(samples * scale).clamp(0, 1).movedim(1, -1), atol=1e-5)
        image = torch.rand(1, 64, 64, 3, generator=g)
        assert torch.allclose(vae.encode(image), enc(image.movedim(-1, 1)) / scale, atol=1e-5)
        empty = dec(torch.zeros(1, 4, 8, 8)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(result.values["3"][0], empty, atol=1e-5)


def test_pseudo_names_are_listed_when_both_halves_exist_and_others_refused(base: Path) -> None:
    folder = paths.model_dirs("vae_approx")[0]
    folder.mkdir(parents=True, exist_ok=True)
    enc, dec = models.ensure_tiny_taesd("sumi_tiny_taesdxl")
    assert {"sumi_tiny_taesd", "sumi_tiny_taesdxl"} <= set(VAELoader.inputs[0].options())
    (folder / "taesdxl_decoder.safetensors").write_bytes(dec.read_bytes())
    paths._LISTINGS.clear()
    assert "taesdxl" not in VAELoader.inputs[0].options()  # one half only, as ComfyUI
    (folder / "taesdxl_encoder.safetensors").write_bytes(enc.read_bytes())
    paths._LISTINGS.clear()
    assert "taesdxl" in VAELoader.inputs[0].options() and VAELoader.check("taesdxl") == {}
    (vae,) = VAELoader().run(None, "taesdxl")
    assert vae.scale == 0.13025
    fp = VAELoader.fingerprint("taesdxl")
    assert "taesdxl_encoder.safetensors" in fp and "taesdxl_decoder.safetensors" in fp

    for name in ("taesd3", "taef1"):  # 16-channel latents: listed as in ComfyUI, refused at validation
        for part in ("encoder", "decoder"):
            (folder / f"{name}_{part}.safetensors").write_bytes(b"")
    paths._LISTINGS.clear()
    assert {"taesd3", "taef1"} <= set(VAELoader.inputs[0].options())
    assert "SD3 latents (16 channels)" in VAELoader.check("taesd3")["vae_name"]
    assert "Flux latents" in VAELoader.check("taef1")["vae_name"]

    # a KL VAE file saved as a TAESD half: named at validation, and the loader refuses it the same way
    kl = {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}
    save_file(kl, folder / "taesd_decoder.safetensors")
    (folder / "taesd_encoder.safetensors").write_bytes(enc.read_bytes())
    paths._LISTINGS.clear()
    error = VAELoader.check("taesd")["vae_name"]
    assert error.startswith("taesd_decoder.safetensors: not a TAESD half: names are not those of an nn.Sequential")
    assert "supported: TAESD halves in the original layout" in error and "checkpoints" not in error
    prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    with pytest.raises(ValidationFailed) as info:
        Executor(build_registry()).prepare(prompt)
    assert [(e.node_id, e.input_name) for e in info.value.errors] == [("1", "vae_name")]
    save_file({k: v for k, v in load_file(enc).items() if not k.startswith("2.")}, folder / "taesd_encoder.safetensors")
    save_file(load_file(dec), folder / "taesd_decoder.safetensors")
    with pytest.raises(CheckpointError, match="layout detected as a TAESD but the tensors do not fit"):
        models.load_taesd("taesd")
