"""Proves the sampling math of `nodes.diffusion` without a real UNet.

1. Parity: for every KSampler run recorded from ComfyUI (`tests/parity/reference/comfy_run.json`, inputs taken from
   the case workflows), our sigmas are bit-identical (float32) and a fake UNet driven through `ksample` receives
   exactly ComfyUI's integer timesteps, one list entry per UNet call (so heun's 5 calls and uni_pc's 3 calls for 3
   steps are checked too), with ComfyUI's noise and start scaling.
2. Correctness on analytic denoisers: a point-mass data set (ideal denoiser = the point) and Gaussian data
   N(0, s^2) (ideal denoiser x·s²/(s²+σ²), exact probability-flow ODE solution known): deterministic samplers
   land on the answer, Euler converges as steps grow, higher-order samplers beat Euler, stochastic samplers
   produce the right data variance.
3. Noise and seeds: CPU-generator noise, batch and batch_index draws, ancestral noise sharing the seed, determinism.
4. Guidance batching, denoise/start/last-step slicing, disable_noise and inpainting masks in `ksample`.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from nodes.diffusion.model_sampling import ModelSamplingDiscrete
from nodes.diffusion.sample import SAMPLER_NAMES, SCHEDULER_NAMES, CFGDenoiser, ksample, prepare_noise
from nodes.diffusion.samplers import SAMPLERS
from nodes.diffusion.schedules import SCHEDULERS, calculate_sigmas

torch.set_num_threads(1)

REFERENCE = Path(__file__).resolve().parents[2] / "parity" / "reference"
MS = ModelSamplingDiscrete()


class FakeUNet:
    """Implements the `ksample` model protocol (conds.ConditionedModel); records every UNet call.
    eps = scale·x_in + context mean."""

    latent_scale = 0.18215
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, eps_scale: float = 0.1) -> None:
        self.model_sampling = MS
        self.eps_scale = eps_scale
        self.calls: list[dict] = []

    def model_inputs(self, cond: torch.Tensor, extras: dict, noise_shape: list, prompt_type: str) -> dict:
        return {"context": cond}

    def apply_model(self, x_in: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        return self.apply_unet(x_in, timestep, inputs["context"])

    def apply_unet(self, x_in: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append({"t": timestep.tolist(), "batch": x_in.shape[0], "x_in": x_in.clone(), "ctx": context})
        return x_in * self.eps_scale + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def cond(value: float, tokens: int = 77) -> list:
    return [[torch.full((1, tokens, 8), value), {"pooled_output": torch.zeros(1, 8)}]]


# ---------------------------------------------------------------------------------------------------------------
# 1. Parity with ComfyUI's recorded sigmas and timesteps
# ---------------------------------------------------------------------------------------------------------------


def _recorded_samplings() -> list[tuple[str, int, dict, dict]]:
    run = json.loads((REFERENCE / "comfy_run.json").read_text())
    out = []
    for case, info in run["cases"].items():
        workflow = json.loads((REFERENCE / "cases" / f"{case}.json").read_text())
        nodes = [workflow[k]["inputs"] for k in ("5", "13") if k in workflow]
        if not info["samplings"]:
            continue  # latent_upscale_bilinear: ComfyUI reused the cached first pass, nothing was recorded
        assert len(nodes) == len(info["samplings"]), case
        for i, (inputs, recorded) in enumerate(zip(nodes, info["samplings"], strict=True)):
            out.append((case, i, inputs, recorded))
    return out


RECORDED = _recorded_samplings()


def test_model_sigmas_match_comfy() -> None:
    env = json.loads((REFERENCE / "comfy_run.json").read_text())["environment"]
    assert float(MS.sigma_min) == env["sigma_min"]
    assert float(MS.sigma_max) == env["sigma_max"]


@pytest.mark.parametrize(("case", "index", "inputs", "recorded"), RECORDED, ids=[f"{c}-{i}" for c, i, _, _ in RECORDED])
def test_sigmas_and_timesteps_match_comfy(case: str, index: int, inputs: dict, recorded: dict) -> None:
    sigmas = calculate_sigmas(MS, inputs["scheduler"], inputs["steps"], inputs["denoise"], inputs["sampler_name"])
    assert torch.equal(sigmas, torch.tensor(recorded["sigmas"], dtype=torch.float32))

    shape = recorded["noise_shape"]
    latent = torch.zeros(shape) if index == 0 and not case.startswith("img2img") else torch.randn(shape)
    model = FakeUNet()
    ksample(model, None, latent, cond(1.0), cond(-1.0), cfg=inputs["cfg"], sampler_name=inputs["sampler_name"],
            scheduler=inputs["scheduler"], steps=inputs["steps"], denoise=inputs["denoise"], seed=inputs["seed"])
    per_call = [sorted(set(c["t"])) for c in model.calls]
    assert per_call == recorded["unet_timesteps"]
    batch = shape[0] * (1 if inputs["cfg"] == 1.0 else 2)
    assert all(c["batch"] == batch for c in model.calls)


def test_start_point_scaling_matches_comfy() -> None:
    """Full-denoise runs start from noise·sqrt(1+σ0²); ddim_uniform (σ0 < σ_max) starts from noise·σ0."""
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42)
    for scheduler, expected_scale in (("normal", math.sqrt(1 + float(MS.sigma_max) ** 2)), ("ddim_uniform", None)):
        model = FakeUNet()
        ksample(model, None, torch.zeros(1, 4, 8, 8), cond(1.0), cond(0.0), cfg=7.0, sampler_name="euler",
                scheduler=scheduler, steps=3, seed=42)
        sigma0 = float(calculate_sigmas(MS, scheduler, 3)[0])
        scale = expected_scale if expected_scale is not None else sigma0
        x0 = model.calls[0]["x_in"][:1] * math.sqrt(sigma0**2 + 1)
        torch.testing.assert_close(x0, noise * scale, rtol=1e-5, atol=1e-5)


def test_scheduler_and_sampler_names_follow_comfy_order() -> None:
    assert SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                               "linear_quadratic", "kl_optimal"]
    required = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_sde", "dpmpp_2m",
                "dpmpp_2m_sde", "ddim", "uni_pc", "uni_pc_bh2"]
    assert [n for n in SAMPLER_NAMES if n in required] == required


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_every_schedule_is_decreasing_and_ends_at_zero(scheduler: str, steps: int) -> None:
    sigmas = calculate_sigmas(MS, scheduler, steps)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    # beta drops repeated timesteps; ddim_uniform keeps stepping by 1000 // steps to the top (7 steps -> 8 sigmas).
    assert len(sigmas) == steps + 1 or scheduler in ("beta", "ddim_uniform")
    assert float(sigmas[0]) <= float(MS.sigma_max) * (1 + 1e-5)


def test_calculate_sigmas_denoise_and_penultimate_rules() -> None:
    full5 = calculate_sigmas(MS, "normal", 5)
    assert torch.equal(calculate_sigmas(MS, "normal", 3, denoise=0.6), full5[-4:])
    assert calculate_sigmas(MS, "normal", 3, denoise=0.0).numel() == 0
    four = calculate_sigmas(MS, "karras", 4)
    assert torch.equal(calculate_sigmas(MS, "karras", 3, sampler_name="dpm_2"), torch.cat([four[:-2], four[-1:]]))


def test_timestep_and_sigma_roundtrip() -> None:
    t = torch.arange(1000)
    assert torch.equal(MS.timestep(MS.sigmas), t)
    torch.testing.assert_close(MS.sigma(t.float()), MS.sigmas, rtol=1e-6, atol=0)
    assert int(MS.timestep(MS.sigma(torch.tensor(499.5)))) == 500


# ---------------------------------------------------------------------------------------------------------------
# 2. Analytic denoisers
# ---------------------------------------------------------------------------------------------------------------

DETERMINISTIC = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc", "uni_pc_bh2"]


def _sigmas(steps: int, sampler: str = "euler") -> torch.Tensor:
    return calculate_sigmas(MS, "karras", steps, sampler_name=sampler)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_point_mass_data_is_recovered(name: str) -> None:
    """If all data is one point, the ideal denoiser returns it everywhere; every sampler must end on it."""
    # float64, so that the check is about the method, not float32 rounding of lambda near sigma 0.001
    target = torch.linspace(-1, 1, 2 * 4 * 4 * 4, dtype=torch.float64).view(2, 4, 4, 4)
    sigmas = _sigmas(6, name).double()
    x = torch.randn(target.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0] + target
    out = SAMPLERS[name](lambda x, s, **_: target.clone(), x, sigmas, extra_args={"seed": 1})
    if name.startswith("uni_pc"):
        # UniPC stops at sigma 0.001, not 0; its exponential integrator is exact for a constant denoiser, so the
        # result is the target plus the starting noise scaled down to sigma 0.001.
        target = target + (x - target) * (0.001 / sigmas[0])
    torch.testing.assert_close(out, target, atol=1e-9, rtol=0)


S = 0.7  # data std of the Gaussian toy problem


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    s2 = sigma.view(-1, *([1] * (x.ndim - 1))) ** 2
    return x * (S**2 / (S**2 + s2))


def _ode_error(name: str, steps: int) -> float:
    sigmas = _sigmas(steps, name)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    exact = x * math.sqrt(S**2 / (S**2 + float(sigmas[0]) ** 2))  # x(0) = x(σ0)·sqrt(s² / (s² + σ0²))
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas.double(), extra_args={"seed": 0})
    return float((out - exact).abs().max() / exact.abs().max())


def test_euler_converges_on_gaussian_ode() -> None:
    errors = [_ode_error("euler", n) for n in (5, 10, 20, 40)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.2 * errors[0]


@pytest.mark.parametrize("name", ["heun", "dpm_2", "lms", "dpmpp_2m", "uni_pc", "uni_pc_bh2"])
def test_higher_order_samplers_beat_euler(name: str) -> None:
    assert _ode_error(name, 20) < 0.25 * _ode_error("euler", 20)


@pytest.mark.parametrize(("name", "variant"), [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("steps", [3, 4, 9])
def test_uni_pc_matches_diffusers_implementation(name: str, variant: str, steps: int) -> None:
    """Independent check of the UniPC bookkeeping (warm-up orders, corrector reuse, lower_order_final): diffusers'
    UniPCMultistepScheduler, fed the same sigmas and the same (VP-space) model, agrees to float64 rounding."""
    diffusers = pytest.importorskip("diffusers")
    sigmas = calculate_sigmas(MS, "karras", steps, sampler_name=name).double()
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    ours = SAMPLERS[name](gaussian_denoiser, x, sigmas)

    scheduler = diffusers.UniPCMultistepScheduler(solver_order=min(3, len(sigmas) - 2), predict_x0=True,
                                                  solver_type=variant, lower_order_final=True,
                                                  final_sigmas_type="sigma_min")
    scheduler.set_timesteps(steps)
    ts = sigmas.clone()
    ts[-1] = 0.001
    scheduler.sigmas, scheduler.timesteps = ts, torch.arange(steps, 0, -1)
    sample = x / torch.sqrt(1 + ts[0] ** 2)
    for i, t in enumerate(scheduler.timesteps):
        x_k = sample * torch.sqrt(1 + ts[i] ** 2)
        eps = (x_k - gaussian_denoiser(x_k, ts[i].view(1))) / ts[i]
        sample = scheduler.step(eps, t, sample).prev_sample
    torch.testing.assert_close(ours, sample * torch.sqrt(1 + ts[-1] ** 2), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                                  "dpmpp_2m_sde", "ddpm"])
def test_stochastic_samplers_reach_data_variance(name: str) -> None:
    """From N(0, s²+σ0²) with the ideal denoiser, SDE/ancestral samplers must end with data std s.

    100 steps because first-order ancestral Euler (and DDPM, the same update here) converges slowly: at 25 steps
    it still under-shoots the std by ~12 %.
    """
    sigmas = _sigmas(100, name)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(5)) * math.sqrt(S**2 + float(sigmas[0]) ** 2)
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, extra_args={"seed": 11})
    assert abs(float(out.std()) / S - 1) < 0.06


# ---------------------------------------------------------------------------------------------------------------
# 3. Noise and seeds
# ---------------------------------------------------------------------------------------------------------------


def test_prepare_noise_is_fresh_cpu_generator_randn() -> None:
    latent = torch.zeros(2, 4, 8, 8, dtype=torch.float16)
    noise = prepare_noise(latent, 42)
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(42)))
    assert torch.equal(noise[:1], prepare_noise(torch.zeros(1, 4, 8, 8), 42))


def test_prepare_noise_batch_index_takes_kth_draw() -> None:
    draws = [torch.randn(1, 4, 8, 8, generator=g) for g in [torch.Generator().manual_seed(7)] for _ in range(4)]
    noise = prepare_noise(torch.zeros(3, 4, 8, 8), 7, batch_index=[3, 0, 3])
    assert torch.equal(noise, torch.cat([draws[3], draws[0], draws[3]]))


def test_ancestral_first_noise_draw_equals_initial_noise() -> None:
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)  # with D = 0 a step is x·σ_down/σ + noise·σ_up

    sigmas = calculate_sigmas(MS, "normal", 3)
    x = prepare_noise(torch.zeros(1, 4, 8, 8), 42) * sigmas[0]
    SAMPLERS["euler_ancestral"](spy, x, sigmas, extra_args={"seed": 42})
    sigma_down = (sigmas[1] ** 2 - (sigmas[1] ** 2 * (sigmas[0] ** 2 - sigmas[1] ** 2) / sigmas[0] ** 2)) ** 0.5
    sigma_up = (sigmas[1] ** 2 - sigma_down**2) ** 0.5
    first_draw = (seen[1] - seen[0] * sigma_down / sigmas[0]) / sigma_up
    torch.testing.assert_close(first_draw, prepare_noise(x, 42), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"])
def test_seed_determinism(name: str) -> None:
    def run(seed: int) -> torch.Tensor:
        return ksample(FakeUNet(), None, torch.zeros(1, 4, 8, 8), cond(1.0), cond(-1.0), cfg=5.0,
                       sampler_name=name, scheduler="karras", steps=4, seed=seed)

    assert torch.equal(run(42), run(42))
    assert not torch.allclose(run(42), run(43))


# ---------------------------------------------------------------------------------------------------------------
# 4. KSampler glue
# ---------------------------------------------------------------------------------------------------------------


def test_cfg_batching_and_formula() -> None:
    model = FakeUNet(eps_scale=0.0)  # eps = context mean, so D = x - σ·c
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 3.0)
    out = CFGDenoiser(model, cond(1.0), cond(-0.5), cfg=7.5)(x, sigma)
    assert [c["batch"] for c in model.calls] == [4]
    assert model.calls[0]["ctx"][:2].mean() == -0.5  # negatives first, as ComfyUI batches them
    torch.testing.assert_close(out, x - 3.0 * (-0.5 + (1.0 + 0.5) * 7.5))

    model.calls.clear()
    out = CFGDenoiser(model, cond(1.0), cond(-0.5), cfg=1.0)(x, sigma)
    assert [c["batch"] for c in model.calls] == [2]
    torch.testing.assert_close(out, x - 3.0 * 1.0)


def test_cfg_mixed_token_lengths_and_multiple_entries() -> None:
    model = FakeUNet(eps_scale=0.0)
    positive = cond(1.0, tokens=154) + cond(3.0)  # two entries, averaged
    CFGDenoiser(model, positive, cond(0.0), cfg=2.0)(torch.zeros(1, 4, 8, 8), torch.ones(1))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 3
    assert model.calls[0]["ctx"].shape[1] == 154


def test_ksample_step_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    latent, noise = torch.randn(1, 4, 8, 8), prepare_noise(torch.zeros(1, 4, 8, 8), 0)

    def run(**kw: object) -> tuple[torch.Tensor, FakeUNet]:
        model = FakeUNet()
        out = ksample(model, noise, latent, cond(1.0), cond(0.0), cfg=1.0, sampler_name="euler",
                      scheduler="normal", steps=3, **kw)
        return out, model

    _, m = run(last_step=2)
    assert [c["t"] for c in m.calls] == [[999.0], [500.0]]
    _, m = run(start_step=1)
    assert [c["t"] for c in m.calls] == [[500.0], [0.0]]
    sigma1 = float(calculate_sigmas(MS, "normal", 3)[1])  # below sigma_max: start is latent + noise·σ
    torch.testing.assert_close(m.calls[0]["x_in"] * math.sqrt(sigma1**2 + 1), latent * 0.18215 + noise * sigma1)
    out, m = run(start_step=3)
    assert not m.calls and torch.equal(out, latent)
    _, m = run(start_step=1, disable_noise=True)
    torch.testing.assert_close(m.calls[0]["x_in"] * math.sqrt(sigma1**2 + 1), latent * 0.18215)

    # The sigmas handed to the sampler: cut after 2 steps, with the last one forced to 0 on request.
    sigmas = calculate_sigmas(MS, "normal", 3)
    for force, expected in ((False, sigmas[:3]), (True, torch.cat([sigmas[:2], torch.zeros(1)]))):
        seen: list[torch.Tensor] = []

        def spy(model, x, sigmas, extra_args=None, callback=None, disable=None, seen=seen):  # type: ignore[no-untyped-def]
            seen.append(sigmas)
            return x

        monkeypatch.setitem(SAMPLERS, "euler", spy)
        run(last_step=2, force_full_denoise=force)
        assert torch.equal(seen[0], expected)


def test_noise_mask_keeps_unmasked_latent_exactly() -> None:
    latent = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 1.0  # repaint the right half only
    calls: list[torch.Tensor] = []

    def record(step: int, total: int, denoised: torch.Tensor) -> None:
        calls.append(denoised)

    out = ksample(FakeUNet(), None, latent, cond(1.0), cond(-1.0), cfg=7.0, sampler_name="dpmpp_2m",
                  scheduler="karras", steps=4, noise_mask=mask, callback=record)
    assert torch.equal(out[..., :4], latent[..., :4])
    assert not torch.allclose(out[..., 4:], latent[..., 4:])
    assert len(calls) == 4


def test_unet_runs_in_model_dtype_and_returns_float32() -> None:
    class HalfUNet(FakeUNet):
        dtype = torch.bfloat16

        def apply_unet(self, x_in: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            assert x_in.dtype == context.dtype == torch.bfloat16 and timestep.dtype == torch.float32
            return super().apply_unet(x_in, timestep, context)

    out = ksample(HalfUNet(), None, torch.zeros(1, 4, 8, 8), cond(1.0), cond(0.0), cfg=3.0, sampler_name="euler",
                  scheduler="normal", steps=2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_callback_once_per_step_and_can_interrupt() -> None:
    for name in SAMPLER_NAMES:
        steps_seen: list[tuple[int, int]] = []
        ksample(FakeUNet(), None, torch.zeros(1, 4, 8, 8), cond(1.0), None, cfg=1.0, sampler_name=name,
                scheduler="karras", steps=4, callback=lambda i, n, d, seen=steps_seen: seen.append((i, n)))
        assert steps_seen == [(i, 4) for i in range(4)], name

    class Interrupted(Exception):
        pass

    def stop(i: int, n: int, d: torch.Tensor) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        ksample(FakeUNet(), None, torch.zeros(1, 4, 8, 8), cond(1.0), None, cfg=1.0, sampler_name="euler",
                scheduler="normal", steps=3, callback=stop)
