"""ControlNet on the tiny models: the tiny file has exactly the real SD1.5 ControlNet's tensor names; detection
refuses other files naming them; a control changes the model output only inside its sigma window, scales with
strength, and chained controls add their residuals; ControlNetApplyAdvanced gives both sides one shared control,
ControlNetApply extends the positive's control to the negative side; an SDXL ControlNet receives the size
conditioning; strength 0 is a pass-through; diffusers folders (safetensors, .bin, fp16 variant; SD1.x and SDXL)
written by diffusers' own save_pretrained give the single file's residuals exactly, and a broken one is a
validation error naming what is missing."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nodes import models, paths
from nodes.conditioning import ControlNetApply, ControlNetApplyAdvanced
from nodes.diffusion import fixtures as F
from nodes.diffusion.conds import prepare
from nodes.diffusion.controlnet import Control, ControlNet, detect_controlnet, load_controlnet
from nodes.diffusion.detect import detect
from nodes.diffusion.reading import CheckpointError

REF = Path(__file__).resolve().parents[1] / "parity" / "reference"
NEXT = Path("/work/shared/reference/parity-next")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    saved = paths.FOLDERS
    root = tmp_path_factory.mktemp("controlnet")
    paths.configure(root)
    model, clip, _ = models.load(models.ensure_default_checkpoint())
    family, net = load_controlnet(models.ensure_tiny_controlnet("sumi_tiny_sd15_controlnet.safetensors"))
    yield model, clip, ControlNet(net, family, torch.device("cpu"), torch.float32)
    paths.FOLDERS = saved


def test_layout_equals_the_real_sd15_controlnets() -> None:
    entries = json.loads((REF / "sd15_layout.json").read_text())["tensors"]
    sd15 = {n: torch.empty(s, device="meta") for n, s, _ in entries}
    names = F.controlnet_layout(detect(sd15))
    if (NEXT / "controlnet_sd15_layout.json").exists():
        ref = json.loads((NEXT / "controlnet_sd15_layout.json").read_text())["tensors"]
        assert {n: s for n, (s, _) in names.items()} == {n: s for n, s, _ in ref}
    found = detect_controlnet({n: torch.empty(s, device="meta") for n, (s, _) in names.items()})
    assert (found.family, found.prefix, found.layout) == ("sd15", "control_model.", "ldm")
    assert found.config["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    with pytest.raises(CheckpointError, match="not a ControlNet"):
        detect_controlnet({"model.diffusion_model.input_blocks.0.0.weight": torch.empty(4, 4, device="meta")})
    with pytest.raises(CheckpointError, match="not a ControlNet"):  # half a diffusers ControlNet
        detect_controlnet({"controlnet_cond_embedding.conv_in.weight": torch.empty(16, 3, 3, 3, device="meta")})


def _out(model, clip, control, sigma: float) -> torch.Tensor:
    cond, pooled = clip.encode("a red apple")
    inputs = model.model_inputs(cond, {"pooled_output": pooled}, (1, 4, 8, 8), "positive")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = model.model_sampling.timestep(torch.tensor([sigma])).float()
    return model.apply_model(x, t, inputs, control=control, sigma=sigma)


def test_window_strength_and_chaining(setup: tuple) -> None:
    model, clip, cn = setup
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    ms = model.model_sampling
    high, low = 10.0, 0.1  # sigmas early and late in sampling
    plain = _out(model, clip, None, high)
    early = Control(cn, hint, 1.0, 0.0, 0.5)
    assert not torch.equal(_out(model, clip, early, high), plain)
    assert torch.equal(_out(model, clip, early, low), _out(model, clip, None, low))  # outside its window
    assert ms.percent_to_sigma(0.5) < high and ms.percent_to_sigma(0.5) > low
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500.0])
    cond, _ = clip.encode("a")
    inputs = {"context": cond}
    d1, m1 = Control(cn, hint, 0.5).residuals(x, t, inputs, 1.0, ms)
    d2, m2 = Control(cn, hint, 1.0).residuals(x, t, inputs, 1.0, ms)
    assert all(torch.allclose(a * 2, b, atol=1e-6) for a, b in zip(d1, d2, strict=True))
    assert torch.allclose(m1 * 2, m2, atol=1e-6)
    hint2 = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    chained = Control(cn, hint2, 0.3, previous=Control(cn, hint, 0.5))
    dc, mc = chained.residuals(x, t, inputs, 1.0, ms)
    d3, m3 = Control(cn, hint2, 0.3).residuals(x, t, inputs, 1.0, ms)
    assert torch.allclose(mc, m1 + m3) and all(torch.allclose(c, a + b) for c, a, b in zip(dc, d1, d3, strict=True))


def test_apply_nodes_share_or_extend_the_control(setup: tuple) -> None:
    model, clip, cn = setup
    hint = torch.rand(1, 64, 64, 3)
    pos, neg = [[clip.encode("a")[0], {"pooled_output": None}]], [[clip.encode("b")[0], {}]]
    p, n = ControlNetApplyAdvanced().run(None, pos, neg, cn, hint, 0.8, 0.0, 0.7)
    assert p[0][1]["control"] is n[0][1]["control"] and "control" not in pos[0][1]
    assert ControlNetApplyAdvanced().run(None, pos, neg, cn, hint, 0.0, 0.0, 1.0) == (pos, neg)
    (old,) = ControlNetApply().run(None, pos, cn, hint, 1.0)
    sides = prepare(model, old, neg, (1, 4, 8, 8))
    assert sides[1][0].control is old[0][1]["control"]  # the old node controls the negative side too
    sides = prepare(model, p, neg, (1, 4, 8, 8))
    assert sides[1][0].control is None  # the advanced node does not, unless given the negative


def test_sdxl_controlnet_gets_the_size_conditioning(setup: tuple) -> None:
    family, net = load_controlnet(models.ensure_tiny_controlnet("sumi_tiny_sdxl_controlnet.safetensors"))
    model, clip, _ = models.load(models.ensure_default_checkpoint("sumi_tiny_sdxl.safetensors"))
    cn = ControlNet(net, family, torch.device("cpu"), torch.float32)
    hint = torch.rand(1, 64, 64, 3)
    cond, pooled = clip.encode("a red apple")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    outs = [Control(cn, hint, 1.0).residuals(x, t, model.model_inputs(cond, {"pooled_output": pooled, "width": w},
                                                                        x.shape, "positive"), 1.0,
                                               model.model_sampling)[1] for w in (64, 1024)]
    assert family == "sdxl" and not torch.allclose(outs[0], outs[1])


# ---------------------------------------------------------------- diffusers-layout ControlNets (folders)


def _residuals(net: torch.nn.Module, family: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    from nodes.diffusion.model_sampling import ModelSamplingDiscrete

    g = torch.Generator().manual_seed(5)
    width = net.config.cross_attention_dim
    inputs = {"context": torch.randn(1, 77, width, generator=g)}
    if family == "sdxl":
        pooled = net.config.projection_class_embeddings_input_dim - 6 * 256
        inputs |= {"text_embeds": torch.randn(1, pooled, generator=g),
                   "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    x, hint = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 64, 64, 3, generator=g)
    cn = ControlNet(net, family, torch.device("cpu"), torch.float32)
    return Control(cn, hint, 0.7).residuals(x, torch.tensor([400.0]), inputs, 1.0, ModelSamplingDiscrete())


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[1], b[1]) and all(torch.equal(p, q) for p, q in zip(a[0], b[0], strict=True))


FOLDERS = [("sd15", "diffusion_pytorch_model.safetensors"), ("sdxl", "diffusion_pytorch_model.safetensors"),
           ("sd15", "diffusion_pytorch_model.bin"), ("sd15", "diffusion_pytorch_model.fp16.safetensors")]


@pytest.mark.parametrize(("family", "file"), FOLDERS, ids=[f"{f}-{n}" for f, n in FOLDERS])
def test_diffusers_folder_gives_the_single_files_residuals(setup: tuple, family: str, file: str) -> None:
    """diffusers' own save_pretrained writes the folder (config.json + weights); Sumi derives the config from the
    weights' names and shapes alone, as ComfyUI does, and gets the original single file's residuals exactly; and
    diffusers' from_pretrained (reading config.json) on that folder agrees."""
    import copy

    from diffusers import ControlNetModel

    from nodes.loaders import ControlNetLoader

    single = models.ensure_tiny_controlnet(f"sumi_tiny_{family}_controlnet.safetensors")
    _, net = load_controlnet(single)
    folder = paths.model_dirs("controlnet")[0] / f"{family}_{file.replace('.', '_')}"
    saved = copy.deepcopy(net).half() if ".fp16." in file else net  # the single file's values are fp16 already
    saved.save_pretrained(folder, safe_serialization=file.endswith(".safetensors"),
                          variant="fp16" if ".fp16." in file else None)
    assert (folder / "config.json").is_file() and (folder / file).is_file()
    got_family, loaded = load_controlnet(folder / file)
    assert got_family == family
    assert loaded.config.conditioning_embedding_out_channels == net.config.conditioning_embedding_out_channels
    assert _same(_residuals(loaded, family), _residuals(net, family))
    if ".fp16." not in file:
        # diffusers reading config.json builds the same model: the same config, the same weights, and residuals
        # equal up to float rounding (its weights sit at other memory alignments, and on some CPUs, AVX2 ones,
        # the kernels' summation order follows the alignment: about 5e-6 here).
        reference = ControlNetModel.from_pretrained(folder).eval()
        own = {k: v for k, v in reference.config.items() if not k.startswith("_")}
        assert own == {k: net.config[k] for k in own}
        theirs, ours = reference.state_dict(), net.state_dict()
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
        expected, got = _residuals(net, family), _residuals(reference, family)
        for p, q in zip([*expected[0], expected[1]], [*got[0], got[1]], strict=True):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=2e-5)
    # listed as ComfyUI lists it (the file inside the folder), validated and loaded by the node
    name = f"{folder.name}/{file}"
    assert name in ControlNetLoader.inputs[0].options()
    assert ControlNetLoader.check(name) == {}
    (out,) = ControlNetLoader().run(None, name)
    assert out.family == family and _same(_residuals(out.net, family), _residuals(net, family))


def test_broken_diffusers_controlnet_is_a_validation_error_naming_it(setup: tuple) -> None:
    from safetensors.torch import load_file, save_file

    from nodes.loaders import ControlNetLoader

    _, net = load_controlnet(models.ensure_tiny_controlnet("sumi_tiny_sd15_controlnet.safetensors"))
    folder = paths.model_dirs("controlnet")[0] / "broken"
    net.save_pretrained(folder)
    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("conv_in.")}, folder / "no_conv_in.safetensors")
    errors = ControlNetLoader.check("broken/no_conv_in.safetensors")
    assert "no UNet input convolution" in errors["control_net_name"]
    assert errors["control_net_name"].startswith("broken/no_conv_in.safetensors: ")
    save_file({k: v for k, v in sd.items() if not k.startswith("down_blocks.1.")}, folder / "gap.safetensors")
    gap = ControlNetLoader.check("broken/gap.safetensors")["control_net_name"]
    assert "no down blocks of resnets numbered 0..n" in gap and "down blocks [0, 2, 3]" in gap
    save_file({k: v for k, v in sd.items() if not k.startswith("controlnet_down_blocks.3.")},
              folder / "half.safetensors")
    assert ControlNetLoader.check("broken/half.safetensors") == {}  # the shapes that are there make a config
    with pytest.raises(CheckpointError) as info:  # whose module the tensors then do not fill
        load_controlnet(folder / "half.safetensors")
    assert info.value.reason == "mismatch" and "SD1.x ControlNet (diffusers layout)" in str(info.value)
