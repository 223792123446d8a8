"""Model families beyond SD1.x and the model-call design.

Proves: detection of every family from names and shapes, table-driven, on Sumi's tiny files and on the full-size
layouts derived from diffusers' own conversion scripts (shared/reference/parity-next, meta tensors only), with
the refusals naming what a file is; the same for component files (diffusers-layout and original ControlNets,
TAESD halves, fp8 UNets, and the text encoders of other families made by transformers); the tiny SDXL UNet
agrees with diffusers' converter; SD2's v-prediction guess; prediction types, zsnr and LCM against their formulas
and diffusers; the SDXL size conditioning reaching the UNet; area / mask / timestep-range conditioning (weights,
feather, uncond copies, the sigma window); weight patches applied only inside `patched()` and restored
bit-exactly; the loader's cache fingerprint following the file and the device policy, and its validation error
for a file Sumi cannot use; the SDXL text encoders' layers, padding and pooled output.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes import devices, models, paths
from nodes.diffusion import detect as D
from nodes.diffusion import fixtures as F
from nodes.diffusion import ldm_layout as L
from nodes.diffusion.checkpoint import build_modules, load_checkpoint
from nodes.diffusion.conds import CondEntry, combine, prepare
from nodes.diffusion.model_sampling import ModelSamplingDiscrete, rescale_zero_terminal_snr_sigmas
from nodes.diffusion.reading import CheckpointError

NEXT = Path("/work/shared/reference/parity-next")
SD15_LAYOUT = Path(__file__).resolve().parents[1] / "parity" / "reference" / "sd15_layout.json"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: F.build_tiny_checkpoint(root / f"{f}.safetensors", family=f) for f in F.FAMILIES}


def _meta(layout: Path) -> dict[str, torch.Tensor]:
    entries = json.loads(layout.read_text())["tensors"]
    return {n: torch.empty(s, dtype=torch.float16, device="meta") for n, s, _ in entries}


# ---------------------------------------------------------------- detection, table-driven

FULL = [  # (layout, family, UNet facts that must hold, text encoders)
    (SD15_LAYOUT, "sd15", {"context_dim": 768, "adm_in_channels": None}, {"clip_l": 768}),
    (NEXT / "sd2_layout.json", "sd2", {"context_dim": 1024, "use_linear_in_transformer": True}, {"clip_h": 1024}),
    (NEXT / "sdxl_base_layout.json", "sdxl", {"context_dim": 2048, "adm_in_channels": 2816,
                                               "transformer_depth": [0, 2, 10]}, {"clip_l": 768, "clip_g": 1280}),
    (NEXT / "sdxl_refiner_layout.json", "sdxl_refiner", {"context_dim": 1280, "adm_in_channels": 2560,
                                                         "model_channels": 384}, {"clip_g": 1280}),
]


@pytest.mark.parametrize(("layout", "family", "facts", "texts"), FULL, ids=[f[1] for f in FULL])
def test_full_size_layouts_detect_and_map_every_tensor(layout: Path, family: str, facts: dict, texts: dict) -> None:
    if not layout.exists():
        pytest.skip(f"{layout} not present: runs where ../shared/reference/parity-next is checked out")
    meta = _meta(layout)
    info = D.detect(meta)
    assert info.family == family and info.latent_scale == D.LATENT_SCALE[family]
    assert {k: info.facts["unet"][k] for k in facts} == facts
    assert {n: t.config["hidden_size"] for n, t in info.text.items()} == texts
    modules = build_modules(info)
    names = L.ldm_names({n: m.state_dict() for n, m in modules.items()}, info.specs())
    unused = set(meta) - set(names)
    assert unused <= {k for k in meta if k.endswith(("position_ids", "logit_scale"))}  # never read, as ComfyUI
    L.from_ldm(meta, {n: m.state_dict() for n, m in modules.items()}, info.specs())  # every shape fits


@pytest.mark.parametrize("family", F.FAMILIES)
def test_tiny_files_detect_as_their_family_and_load_strictly(tiny_files: dict[str, Path], family: str) -> None:
    ck = load_checkpoint(tiny_files[family])
    want = F.tiny_info(family)
    assert ck.family == family
    assert (ck.info.unet_config, ck.info.vae_config) == (want.unet_config, want.vae_config)
    assert {n: t.config for n, t in ck.info.text.items()} == {n: t.config for n, t in want.text.items()}
    assert list(ck.text_encoders) == list(D.TEXT_LAYOUTS[family])
    # the tiny file has exactly the real file's tensor names, digits aside (checked against the full layouts)
    real = {"sd15": SD15_LAYOUT, "sd2": NEXT / "sd2_layout.json", "sdxl": NEXT / "sdxl_base_layout.json",
            "sdxl_refiner": NEXT / "sdxl_refiner_layout.json"}[family]
    if real.exists():
        import re

        def norm(names: Any) -> set[str]:
            return {re.sub(r"\d+", "#", n) for n in names}

        tiny = set(load_file(tiny_files[family])) - set(F.ddpm_buffers())
        assert norm(tiny) == norm(json.loads(real.read_text())["tensors"][i][0]
                                  for i in range(len(json.loads(real.read_text())["tensors"])))


def test_tiny_sdxl_unet_agrees_with_diffusers_converter(tiny_files: dict[str, Path]) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd = load_file(tiny_files["sdxl"])
    ck = load_checkpoint(tiny_files["sdxl"], dtype=torch.float16)
    ref = convert_ldm_unet_checkpoint(sd, ck.info.unet_config)
    mine = ck.unet.state_dict()
    assert set(ref) == set(mine)
    assert all(torch.equal(ref[k], mine[k]) for k in mine)


REFUSED = [  # (changes to the tiny SD1.5 file, what the error must say)
    ({"model.diffusion_model.input_blocks.0.0.weight": [32, 8, 3, 3]}, "instruct-pix2pix UNet (8 input channels)"),
    ({"control_model.zero_convs.0.0.weight": [32, 32, 1, 1]}, "a ControlNet"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 32]}, "a LoRA"),
    ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": [9, 3]}, "a Flux checkpoint"),
]


@pytest.mark.parametrize(("changes", "said"), REFUSED, ids=[r[1] for r in REFUSED])
def test_unusable_files_are_refused_naming_what_they_are(tiny_files: dict[str, Path], changes: dict,
                                                         said: str) -> None:
    meta = {k: torch.empty(v.shape, device="meta") for k, v in load_file(tiny_files["sd15"]).items()}
    meta |= {k: torch.empty(s, device="meta") for k, s in changes.items()}
    with pytest.raises(CheckpointError) as info:
        D.detect(meta)
    assert said in str(info.value) and "supported:" in str(info.value)


# ---------------------------------------------------------------- component files, table-driven


def _meta_of(sd: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=dtype or v.dtype, device="meta") for k, v in sd.items()}


def _diffusers_controlnet(family: str) -> dict[str, torch.Tensor]:
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):  # diffusers' own ControlNet layout, as save_pretrained writes it
        return dict(ControlNetModel.from_unet(UNet2DConditionModel.from_config(F.tiny_info(family).unet_config))
                    .state_dict())


def _tiny_unet(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    info = F.tiny_info("sd15")
    unet = {k[len(L.UNET_PREFIX):]: torch.empty(s, dtype=dtype, device="meta")
            for k, (s, _) in F.family_layout(info).items() if k.startswith(L.UNET_PREFIX)}
    return unet


def _controlnet(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    from nodes.diffusion.controlnet import detect_controlnet

    found = detect_controlnet(sd)
    return {"family": found.family, "layout": found.layout, "hint": found.config["conditioning_embedding_out_channels"],
            "adm": found.config.get("addition_embed_type")}


def _taesd(part: str) -> Any:
    from nodes.diffusion.taesd import detect_taesd

    return lambda sd: (lambda h: {"blocks": list(h.blocks), "widths": list(h.widths), "latent": h.latent_channels})(
        detect_taesd(sd, part))


def _text(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    name, spec = D.detect_text_encoder(sd)
    return {"name": name, "kind": spec.kind}


def _foreign(kind: str) -> Any:
    from tests.nodes import foreign_files

    return lambda: _meta_of(foreign_files.BUILDERS[kind]())


COMPONENTS = [  # (id, file's tensors, detector, the facts it must find, or the phrase its refusal must hold)
    ("controlnet-diffusers-sd15", lambda: _diffusers_controlnet("sd15"), _controlnet,
     {"family": "sd15", "layout": "diffusers", "hint": [16, 32, 96, 256], "adm": None}),
    ("controlnet-diffusers-sdxl", lambda: _diffusers_controlnet("sdxl"), _controlnet,
     {"family": "sdxl", "layout": "diffusers", "adm": "text_time"}),
    ("controlnet-original-sdxl", lambda: {n: torch.empty(s, device="meta") for n, (s, _) in
                                          F.controlnet_layout(F.tiny_info("sdxl")).items()}, _controlnet,
     {"family": "sdxl", "layout": "ldm", "adm": "text_time"}),
    ("taesd-encoder", lambda: _meta_of({n: torch.empty(s) for n, (s, _) in F.taesd_layout("encoder").items()}),
     _taesd("encoder"), {"blocks": [1, 3, 3, 3], "widths": [64] * 4, "latent": 4}),
    ("taesd-decoder", lambda: _meta_of({n: torch.empty(s) for n, (s, _) in F.taesd_layout("decoder").items()}),
     _taesd("decoder"), {"blocks": [3, 3, 3, 1], "widths": [64] * 4, "latent": 4}),
    ("taesd-decoder-as-encoder", lambda: _meta_of({n: torch.empty(s) for n, (s, _) in
                                                   F.taesd_layout("decoder").items()}),
     _taesd("encoder"), "not a TAESD encoder"),
    ("taesd-half-is-a-kl-vae", lambda: {"encoder.conv_in.weight": torch.empty(8, 3, 3, 3, device="meta")},
     _taesd("decoder"), "not a TAESD half"),
    ("unet-fp8-e4m3", lambda: _tiny_unet(torch.float8_e4m3fn), lambda sd: {"family": D.detect_diffusion_model(sd)[
        0].family}, {"family": "sd15"}),
    ("unet-fp8-e5m2-sgm-prefix", lambda: {L.UNET_PREFIX + k: v for k, v in _tiny_unet(torch.float8_e5m2).items()},
     lambda sd: {"prefix": D.detect_diffusion_model(sd)[1]}, {"prefix": L.UNET_PREFIX}),
    ("text-t5", _foreign("t5"), _text, "this is a T5 text encoder"),
    ("text-umt5", _foreign("umt5"), _text, "this is a UMT5 text encoder"),
    ("text-qwen2", _foreign("qwen"), _text, "this is a decoder-only language model"),
    ("text-clip-vision", _foreign("clip_vision"), _text, "this is a CLIP vision (image) encoder"),
]


@pytest.mark.parametrize(("files", "detector", "want"), [c[1:] for c in COMPONENTS], ids=[c[0] for c in COMPONENTS])
def test_component_files_detect_from_names_and_shapes(files: Any, detector: Any, want: dict | str) -> None:
    sd = files()
    if isinstance(want, str):
        with pytest.raises(CheckpointError) as info:
            detector(sd)
        assert want in str(info.value)
    else:
        found = detector(sd)
        assert {k: found[k] for k in want} == want


def test_unclip_and_mixed_families_are_refused(tiny_files: dict[str, Path]) -> None:
    meta = {k: torch.empty(v.shape, device="meta") for k, v in load_file(tiny_files["sd2"]).items()}
    meta[L.UNET_PREFIX + "label_emb.0.0.weight"] = torch.empty(128, 1024, device="meta")
    with pytest.raises(CheckpointError, match="unCLIP"):
        D.detect(meta)
    xl = {k: torch.empty(v.shape, device="meta") for k, v in load_file(tiny_files["sdxl"]).items()
          if not k.startswith(L.UNET_PREFIX + "label_emb")}
    with pytest.raises(CheckpointError, match="without an ADM input"):
        D.detect(xl)


def test_sd2_v_prediction_guess_reads_the_norm_bias(tiny_files: dict[str, Path]) -> None:
    sd = load_file(tiny_files["sd2"])
    probe = L.UNET_PREFIX + D.SD2_VPRED_PROBE
    assert D.detect(sd, sd.__getitem__).schedule["prediction_type"] == "epsilon"  # rule biases: std 0.02
    sd[probe] = torch.randn(sd[probe].shape, generator=torch.Generator().manual_seed(0)).half() * 0.5
    assert D.detect(sd, sd.__getitem__).schedule["prediction_type"] == "v_prediction"
    assert D.detect(sd).schedule["prediction_type"] == "epsilon"  # without values: no guess


# ---------------------------------------------------------------- prediction types


def test_v_prediction_x0_and_eps_recover_the_clean_latent() -> None:
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma = torch.tensor([3.0, 0.5])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + eps * s  # k-diffusion: noisy latent at sigma
    alpha, sig = 1 / (s**2 + 1).sqrt(), s / (s**2 + 1).sqrt()  # VP coefficients of the scaled input
    v = alpha * eps - sig * x0
    for prediction, out in (("eps", eps), ("v_prediction", v), ("x0", x0)):
        ms = ModelSamplingDiscrete(prediction=prediction)
        assert torch.allclose(ms.calculate_denoised(sigma, out, x), x0, atol=1e-5), prediction
    assert ModelSamplingDiscrete(prediction="epsilon").prediction == "eps"  # diffusers' name
    with pytest.raises(ValueError, match="unsupported prediction"):
        ModelSamplingDiscrete(prediction="edm")


def test_zsnr_matches_diffusers_rescaled_schedule() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          rescale_betas_zero_snr=True)
    ac = sched.alphas_cumprod.double()
    want = ((1 - ac) / ac).sqrt()
    got = ModelSamplingDiscrete(zsnr=True).sigmas.double()
    assert torch.allclose(got[:-1], want[:-1].float().double(), rtol=1e-4)
    assert math.isclose(float(got[-1]), math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08), rel_tol=1e-5)
    assert torch.equal(rescale_zero_terminal_snr_sigmas(ModelSamplingDiscrete().sigmas), got)


def test_lcm_uses_50_timesteps_and_the_boundary_condition() -> None:
    base, lcm = ModelSamplingDiscrete(), ModelSamplingDiscrete(prediction="lcm")
    assert len(lcm.sigmas) == 50 and torch.equal(lcm.sigmas, base.sigmas[19::20])
    assert int(lcm.timestep(lcm.sigma_max)) == 999 and int(lcm.timestep(lcm.sigma_min)) == 19
    sigma = lcm.sigmas[10:11]
    x, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = 219 * 10.0
    c_skip, c_out = 0.25 / (t**2 + 0.25), t / (t**2 + 0.25) ** 0.5
    want = c_out * (x - eps * sigma) + c_skip * x
    assert torch.allclose(lcm.calculate_denoised(sigma, eps, x), want)


def test_model_sampling_node_returns_a_view_and_keeps_the_cached_model() -> None:
    from nodes.model_patches import ModelSamplingDiscrete as Node

    model = models.DiffusionModel(torch.nn.Linear(1, 1), ModelSamplingDiscrete(), 0.18215, torch.device("cpu"),
                                  torch.float32, "sd2")
    (v,) = Node().run(None, model=model, sampling="v_prediction", zsnr=True)
    assert v.unet is model.unet and v.family == "sd2" and v.model_sampling.prediction == "v_prediction"
    assert model.model_sampling.prediction == "eps" and not model.model_sampling.zsnr
    assert v.model_sampling.zsnr and float(v.model_sampling.sigma_max) > 4000


# ---------------------------------------------------------------- conditioning


class Recorder:
    """A model that records each call: output = the mean of the context, per row (so entries are told apart)."""

    latent_scale = 1.0
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        self.model_sampling = ModelSamplingDiscrete(prediction="x0")
        self.calls: list[tuple[tuple[int, ...], list[float]]] = []

    def model_inputs(self, cond: torch.Tensor, extras: dict, noise_shape: Any, prompt_type: str) -> dict:
        return {"context": cond}

    def apply_model(self, x_in: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        rows = inputs["context"].mean(dim=(1, 2))
        self.calls.append((tuple(x_in.shape), rows.tolist()))
        return rows.view(-1, 1, 1, 1).expand_as(x_in).clone()


def c(value: float, **extras: Any) -> list:
    return [torch.full((1, 77, 4), value), {"pooled_output": torch.zeros(1, 4), **extras}]


def _denoise(model: Recorder, pos: list, neg: list | None, shape: tuple[int, ...], sigma: float = 1.0) -> list:
    from nodes.diffusion.sample import CFGDenoiser

    d = CFGDenoiser(model, pos, neg, 2.0 if neg else 1.0, shape)
    x = torch.zeros(shape)
    return combine(model, d.sides, x, torch.tensor([sigma]), d.unet_denoise)


def test_areas_are_cropped_feathered_weighted_and_get_uncond_copies() -> None:
    model = Recorder()
    left = c(1.0, area=(8, 8, 0, 0), strength=1.0)
    right = c(3.0, area=(8, 8, 0, 4), strength=2.0)  # overlaps columns 4-7 of the left one
    pos, neg = _denoise(model, [left, right], [c(-1.0)], (1, 4, 8, 16))
    # one full-frame negative call, then the four 8×8 crops (two negative copies) in one batch, negatives first
    assert sorted(model.calls) == sorted([((1, 4, 8, 16), [-1.0]), ((4, 4, 8, 8), [-1.0, -1.0, 3.0, 1.0])])
    # width 8 → rr = 2: only each area's edge columns inside the image are halved (strength × 1/2)
    assert pos[0, 0, 0, 0] == 1.0 and pos[0, 0, 0, 10] == 3.0 and pos[0, 0, 0, 15] == 0.0  # nothing covers 12-15
    assert math.isclose(float(pos[0, 0, 0, 4]), (1.0 * 1.0 + 3.0 * 1.0) / (1.0 + 1.0), rel_tol=1e-6)
    assert math.isclose(float(pos[0, 0, 0, 7]), (1.0 * 0.5 + 3.0 * 2.0) / (0.5 + 2.0), rel_tol=1e-6)
    assert torch.allclose(neg, torch.full_like(neg, -1.0))


def test_percentage_area_resolves_against_the_latent() -> None:
    model = Recorder()
    entries, _ = prepare(model, [c(1.0, area=("percentage", 1.0, 0.5, 0.0, 0.5))], None, (1, 4, 8, 8))
    assert entries[0].area == (8, 4, 0, 4)


def test_mask_weights_per_pixel_and_mask_bounds_sets_the_area() -> None:
    model = Recorder()
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0
    (out,) = _denoise(model, [c(1.0), c(5.0, mask=mask, mask_strength=1.0)], None, (1, 4, 8, 8))
    assert torch.allclose(out[..., :4], torch.ones(1, 4, 8, 4)) and torch.allclose(out[..., 4:], torch.full(
        (1, 4, 8, 4), 3.0))
    entries, _ = prepare(model, [c(1.0, mask=mask, set_area_to_bounds=True)], None, (1, 4, 8, 8))
    assert entries[0].area == (8, 8, 0, 4)


def test_timestep_range_switches_an_entry_on_and_off_by_sigma() -> None:
    model = Recorder()
    ms = model.model_sampling
    early = c(1.0, start_percent=0.0, end_percent=0.5)
    late = c(9.0, start_percent=0.5, end_percent=1.0)
    middle = ms.percent_to_sigma(0.5)
    (hi,) = _denoise(model, [early, late], None, (1, 4, 2, 2), sigma=middle * 2)
    (lo,) = _denoise(model, [early, late], None, (1, 4, 2, 2), sigma=middle / 2)
    assert torch.allclose(hi, torch.ones_like(hi)) and torch.allclose(lo, torch.full_like(lo, 9.0))
    assert ms.percent_to_sigma(0.0) == 999999999.9 and ms.percent_to_sigma(1.0) == 0.0


def test_conditioning_nodes() -> None:
    from nodes.conditioning import (
        ConditioningAverage,
        ConditioningCombine,
        ConditioningConcat,
        ConditioningSetArea,
        ConditioningSetAreaPercentage,
        ConditioningSetTimestepRange,
        ConditioningZeroOut,
    )

    a, b = [c(1.0)], [c(3.0)]
    assert ConditioningCombine().run(None, a, b)[0] == [a[0], b[0]]
    (avg,) = ConditioningAverage().run(None, a, b, 0.25)
    assert torch.allclose(avg[0][0], torch.full((1, 77, 4), 2.5))
    (cat,) = ConditioningConcat().run(None, a, b)
    assert cat[0][0].shape == (1, 154, 4) and torch.equal(cat[0][0][:, 77:], b[0][0])
    (area,) = ConditioningSetArea().run(None, a, 64, 128, 8, 16, 0.5)
    assert area[0][1]["area"] == (16, 8, 2, 1) and area[0][1]["strength"] == 0.5 and "area" not in a[0][1]
    (pct,) = ConditioningSetAreaPercentage().run(None, a, 0.5, 1.0, 0.5, 0.0, 1.0)
    assert pct[0][1]["area"] == ("percentage", 1.0, 0.5, 0.0, 0.5)
    (zero,) = ConditioningZeroOut().run(None, a)
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any() and a[0][0].all()
    (rng,) = ConditioningSetTimestepRange().run(None, a, 0.2, 0.8)
    assert (rng[0][1]["start_percent"], rng[0][1]["end_percent"]) == (0.2, 0.8)


def test_uncond_copy_takes_the_smallest_containing_entry() -> None:
    model = Recorder()
    pos = [c(1.0, area=(4, 4, 0, 0))]
    neg = [c(-1.0), c(-2.0, area=(6, 6, 0, 0))]
    _, negs = prepare(model, pos, neg, (1, 4, 8, 8))
    copy = negs[-1]
    assert isinstance(copy, CondEntry) and copy.area == (4, 4, 0, 0)
    assert float(copy.inputs["context"].mean()) == -2.0


# ---------------------------------------------------------------- patches and SDXL inputs


def test_weight_patches_apply_only_inside_patched_and_restore_exactly() -> None:
    lin = torch.nn.Linear(3, 3)
    before = lin.weight.detach().clone()
    base = models.DiffusionModel(lin, ModelSamplingDiscrete(), 1.0, torch.device("cpu"), torch.float32)
    view = base.clone(patches=(models.WeightPatch("weight", lambda: torch.ones(3, 3), 0.5),))
    assert view.unet is base.unet and base.patches == ()
    with view.patched():
        assert torch.equal(lin.weight, before + 0.5)
    assert torch.equal(lin.weight, before)
    with pytest.raises(RuntimeError), view.patched():
        raise RuntimeError("a failing sampler")
    assert torch.equal(lin.weight, before)  # restored on errors too


def test_sdxl_time_ids_default_to_the_latent_size() -> None:
    ids = models.sdxl_time_ids("sdxl", {}, (1, 4, 8, 12), "positive")
    assert ids.tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]]
    given = {"width": 1024, "height": 768, "crop_w": 8, "crop_h": 16, "target_width": 512, "target_height": 256}
    assert models.sdxl_time_ids("sdxl", given, (1, 4, 8, 8), "positive").tolist() == [[768, 1024, 16, 8, 256, 512]]
    assert models.sdxl_time_ids("sdxl_refiner", {}, (1, 4, 8, 8), "negative").tolist() == [[64, 64, 0, 0, 2.5]]
    assert models.sdxl_time_ids("sdxl_refiner", {}, (1, 4, 8, 8), "positive")[0, 4] == 6.0


def test_sdxl_size_conditioning_reaches_the_unet(tiny_files: dict[str, Path]) -> None:
    model, clip, _ = models.load(tiny_files["sdxl"])
    cond, pooled = clip.encode_pair("a red apple", "a red apple")
    assert cond.shape == (1, 77, 64) and pooled.shape == (1, 32)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    outs = [model.apply_model(x, t, model.model_inputs(cond, {"pooled_output": pooled, "width": w}, x.shape, "p"))
            for w in (64, 1024)]
    assert outs[0].shape == x.shape and not torch.allclose(outs[0], outs[1])


def test_sdxl_text_encoders_use_penultimate_unnormed_layers_and_g_pads_with_zero(tiny_files: dict[str, Path]) -> None:
    _, clip, _ = models.load(tiny_files["sdxl"])
    tokens = clip.tokenize("a red apple")
    assert tokens["clip_l"][0][-1][0] == 49407 and tokens["clip_g"][0][-1][0] == 0
    g = clip.encoders["clip_g"]
    ids = torch.tensor([[t for t, _ in tokens["clip_g"][0]]])
    out = g.model.text_model(input_ids=ids, output_hidden_states=True)
    cond, pooled = clip.encode("a red apple")
    assert torch.equal(cond[..., 32:], out.hidden_states[-2])  # bigG: penultimate, no final norm
    first_end = int((ids == 49407).int().argmax())
    assert torch.allclose(pooled, g.model.text_projection(out.last_hidden_state[:, first_end]))
    assert torch.equal(clip.with_layer(-1).encode("a red apple")[0][..., 32:], out.hidden_states[-1])


def test_sd2_text_encoder_is_penultimate_with_the_final_norm(tiny_files: dict[str, Path]) -> None:
    _, clip, _ = models.load(tiny_files["sd2"])
    h = clip.encoders["clip_h"]
    tokens = clip.tokenize("a red apple")["clip_h"]
    ids = torch.tensor([[t for t, _ in tokens[0]]])
    out = h.model.text_model(input_ids=ids, output_hidden_states=True)
    cond, _ = clip.encode("a red apple")
    assert torch.equal(cond, h.model.text_model.final_layer_norm(out.hidden_states[-2]))


# ---------------------------------------------------------------- the loader: fingerprint and validation


def test_loader_fingerprint_follows_the_file_and_the_device_policy(tmp_path: Path,
                                                                    tiny_files: dict[str, Path]) -> None:
    from nodes.loaders import CheckpointLoaderSimple as Loader

    saved, policy = paths.FOLDERS, devices.POLICY
    try:
        paths.configure(tmp_path)
        folder = tmp_path / "models" / "checkpoints"
        folder.mkdir(parents=True)
        target = folder / "m.safetensors"
        target.write_bytes(tiny_files["sd15"].read_bytes())
        first = Loader.fingerprint(ckpt_name="m.safetensors")
        assert Loader.fingerprint(ckpt_name="m.safetensors") == first
        devices.configure("cpu", "bf16")
        assert Loader.fingerprint(ckpt_name="m.safetensors") != first
        devices.POLICY = policy
        target.write_bytes(tiny_files["sd2"].read_bytes())  # another model under the same name
        assert Loader.fingerprint(ckpt_name="m.safetensors") != first
    finally:
        paths.FOLDERS, devices.POLICY = saved, policy


def test_loader_validation_names_what_an_unusable_file_is(tmp_path: Path, tiny_files: dict[str, Path]) -> None:
    from executor.errors import ValidationFailed
    from executor.runner import Executor
    from nodes import build_registry

    saved = paths.FOLDERS
    try:
        paths.configure(tmp_path)
        folder = tmp_path / "models" / "checkpoints"
        folder.mkdir(parents=True)
        sd = load_file(tiny_files["sd15"])
        sd[L.UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3, dtype=torch.float16)
        save_file(sd, str(folder / "ip2p.safetensors"))
        prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ip2p.safetensors"}},
                  "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                  "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
                  "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
        with pytest.raises(ValidationFailed) as info:
            Executor(build_registry()).prepare(prompt)
        errors = [e for e in info.value.errors if e.node_id == "1"]
        assert errors and errors[0].input_name == "ckpt_name" and errors[0].type == "custom_validation_failed"
        assert "instruct-pix2pix UNet (8 input channels)" in errors[0].message
    finally:
        paths.FOLDERS = saved
