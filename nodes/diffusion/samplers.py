"""Samplers: numerical solvers for the diffusion ODE/SDE in k-diffusion's sigma parameterisation.

Every sampler has one signature, `fn(model, x, sigmas, extra_args=None, callback=None, disable=None) -> x`:

- `model(x, sigma_batch, **extra_args) -> denoised` is the denoiser D(x; sigma) of Karras et al. 2022, with
  `x = x0 + sigma * n`; `sigma_batch` is a [B] tensor;
- `x` starts at noise level `sigmas[0]` and the result is at `sigmas[-1]` (usually 0);
- `extra_args["seed"]` seeds the stochastic samplers; the rest of `extra_args` is passed to `model`;
- `callback({"i", "x", "sigma", "sigma_hat", "denoised"})` is called once per step (progress, previews,
  interruption: it may raise);
- `disable` is accepted for k-diffusion compatibility (it turns a progress bar off; there is none here).

The formulas are the published ones (papers cited per sampler); float32 evaluation order follows ComfyUI's
where it affects results beyond rounding, so a seed gives the same image in both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[..., torch.Tensor]
StepCallback = Callable[[dict[str, Any]], None]
Sampler = Callable[..., torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Helpers named after the math
# ---------------------------------------------------------------------------------------------------------------


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a [B] (or scalar) tensor broadcasts against an ndim tensor."""
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic step to sigma_down plus fresh noise sigma_up.

    sigma_down^2 + sigma_up^2 = sigma_to^2; eta = 1 is DDPM's ancestral variance (Ho et al. 2020).
    """
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def seeded_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """Gaussian noise from a fresh CPU generator seeded with `seed`, one draw of x's shape per call.

    Drawn in float32 on the CPU and then moved, so a seed gives the same noise on any device; the first draw
    equals the initial noise of the same seed.
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return noise.to(device=x.device, dtype=x.dtype)

    return draw


class BrownianTreeNoiseSampler:
    """Noise for SDE samplers from one Brownian motion W(sigma), so a step's noise depends only on its interval.

    A `torchsde.BrownianTree` on the CPU over [min nonzero sigma, max sigma], entropy = seed, w0 = zeros of x's
    shape (one tree for the whole batch). The noise for sigma -> sigma' is (W(sigma') - W(sigma)) /
    sqrt(|sigma' - sigma|), a standard normal sample; Brownian increments make results stable when the number of
    steps changes (Kidger et al. 2021, "Efficient and Accurate Gradients for Neural SDEs").
    """

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seed: int | None) -> None:
        t0, t1 = torch.as_tensor(sigma_min).detach().cpu(), torch.as_tensor(sigma_max).detach().cpu()
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        w0 = torch.zeros(x.shape, dtype=x.dtype)
        import torchsde  # imported on first use, like scipy below: start-up time only the SDE samplers need

        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        with warnings.catch_warnings():
            # Querying exactly at sigma_max trips torchsde's float tolerance check ("Should have tb<=t1"); harmless.
            warnings.simplefilter("ignore", UserWarning)
            w = self.tree(lo.detach().cpu().float(), hi.detach().cpu().float())
        w = w.to(device=lo.device, dtype=lo.dtype) * (self.sign * sign)
        return w / (hi - lo).abs().sqrt()


def _setup(x: torch.Tensor, extra_args: dict[str, Any] | None) -> tuple[dict[str, Any], torch.Tensor]:
    return ({} if extra_args is None else extra_args), x.new_ones([x.shape[0]])


def _report(
    callback: StepCallback | None, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor
) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def _brownian(x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any]) -> BrownianTreeNoiseSampler:
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), extra_args.get("seed"))


# ---------------------------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                 callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """Euler steps on the probability-flow ODE: Algorithm 2 of Karras et al. 2022 without churn."""
    extra_args, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, x, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                           extra_args: dict[str, Any] | None = None, callback: StepCallback | None = None,
                           disable: bool | None = None) -> torch.Tensor:
    """Ancestral sampling with Euler steps (k-diffusion; DDPM-style noise re-injection, eta = 1)."""
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """Heun's 2nd-order method: Algorithm 2 of Karras et al. 2022 without churn (Euler on the final step to 0)."""
    extra_args, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                 callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver-2 style midpoint steps (Lu et al. 2022) in Karras' ODE form: midpoint at the geometric mean sigma."""
    extra_args, s_in = _setup(x, extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                           extra_args: dict[str, Any] | None = None, callback: StepCallback | None = None,
                           disable: bool | None = None) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver-2 midpoint steps to sigma_down, then noise up to sigma' (eta = 1)."""
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, x, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def linear_multistep_coeff(order: int, t: Any, i: int, j: int) -> float:
    """Adams-Bashforth weight of the derivative at t[i - j]: integral over [t[i], t[i+1]] of its Lagrange basis."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    from scipy import integrate

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
               callback: StepCallback | None = None, disable: bool | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth, order 4) on the ODE in sigma, as in Karras/k-diffusion's LMS (PLMS idea of
    Liu et al. 2022); weights integrated numerically (scipy quad, epsrel 1e-4); the step to sigma 0 returns D(x)."""
    extra_args, s_in = _setup(x, extra_args)
    # float32 numpy, like the reference implementation: the weights' rounding follows from it.
    sigmas_np = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                              extra_args: dict[str, Any] | None = None, callback: StepCallback | None = None,
                              disable: bool | None = None) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, arXiv:2211.01095, Alg. 1 singlestep, r = 1/2), eta = 1."""
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        _report(callback, i, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # Half-log-SNR t = -log(sigma); the intermediate point s sits halfway in t.
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            s = t + h / 2
            x_2 = ((-s).exp() / (-t).exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, (-s).exp() * s_in, **extra_args)
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                     callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++ SDE, 2nd-order singlestep (Lu et al. 2022, arXiv:2211.01095) with ancestral noise (eta 1,
    r = 1/2) drawn from a Brownian tree; two model calls per step, one on the last step to sigma 0."""
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = _brownian(x, sigmas, extra_args)
    r = 0.5
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        # lambda = log(alpha / sigma) = -log(sigma) for epsilon models, whose alpha is 1 in this parameterisation.
        lambda_s, lambda_t = -sigmas[i].log(), -sigmas[i + 1].log()
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = (-lambda_s_1).exp()
        alpha_s, alpha_s_1 = sigmas[i] * lambda_s.exp(), sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        # Step 1: to the intermediate point, deterministic part to sigma_down plus noise.
        sd, su = get_ancestral_step((-lambda_s).exp(), (-lambda_s_1).exp())
        h_ = -sd.log() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        x_2 = x_2 + alpha_s_1 * noise_sampler(sigmas[i], sigma_s_1) * su
        denoised_2 = model(x_2, sigma_s_1 * s_in, **extra_args)
        # Step 2: full step using the 2nd-order combination of both denoised estimates.
        sd, su = get_ancestral_step((-lambda_s).exp(), (-lambda_t).exp())
        h_ = -sd.log() - lambda_s
        fac = 1 / (2 * r)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                    callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): multistep 2nd-order data-prediction solver, Lu et al. 2022 (arXiv:2211.01095), Alg. 2."""
    extra_args, s_in = _setup(x, extra_args)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                        extra_args: dict[str, Any] | None = None, callback: StepCallback | None = None,
                        disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095, SDE variant), midpoint solver, eta 1, Brownian-tree
    noise; the step to sigma 0 returns the denoised estimate."""
    if len(sigmas) <= 1:
        return x
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = _brownian(x, sigmas, extra_args)
    eta = 1.0
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = -sigmas[i].log(), -sigmas[i + 1].log()
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                # Midpoint correction with the previous denoised estimate (2nd order).
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) between arbitrary sigmas, done in VP space."""
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, denoised)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        abar = 1 / (sigma * sigma + 1)
        abar_prev = 1 / (sigma_prev * sigma_prev + 1)
        alpha = abar / abar_prev
        # Posterior mean of x_{t-1} given x_t and the predicted noise (DDPM eq. 11).
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_prev > 0:
            x = x + ((1 - alpha) * (1.0 - abar_prev) / (1.0 - abar)).sqrt() * noise_sampler(sigma, sigma_prev)
            x = x * torch.sqrt(1.0 + sigma_prev**2.0)
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
               callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Alg. 1): jump to D(x), re-noise to sigma'."""
    extra_args, s_in = _setup(x, extra_args)
    noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x
    return x


# ---------------------------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
# arXiv:2302.04867), multistep, data prediction, B(h) variants bh1 / bh2.
# ---------------------------------------------------------------------------------------------------------------


class _VPSchedule:
    """VP-space coefficients as functions of sigma: alpha = 1/sqrt(1+sigma^2), std = sigma * alpha.

    Evaluated through log(alpha) exactly as ComfyUI does rather than simplified (lambda = -log sigma): in float32
    at sigma = 0.001 the two differ by ~0.02 in lambda, which moves UniPC's last step visibly.
    """

    @staticmethod
    def log_alpha(sigma: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.log(1 / (sigma * sigma + 1))

    def alpha(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(sigma))

    def std(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(sigma)))

    def lam(self, sigma: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha(sigma)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _unipc_step(
    ns: _VPSchedule,
    x: torch.Tensor,
    model_prev: list[torch.Tensor],
    t_prev: list[torch.Tensor],
    t: torch.Tensor,
    order: int,
    use_corrector: bool,
    variant: str,
    data_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniP predictor step of `order` (+ UniC corrector, which costs the model call at t that the next step
    reuses). Returns the new x and the model output at t (None without corrector). Paper Alg. 2/3, B(h) form."""
    lambda_prev_0, lambda_t = ns.lam(t_prev[-1]), ns.lam(t)
    model_prev_0 = model_prev[-1]
    alpha_t = ns.alpha(t)
    h = lambda_t - lambda_prev_0

    rks, d1s = [], []
    for i in range(1, order):
        rk = (ns.lam(t_prev[-(i + 1)]) - lambda_prev_0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks.append(torch.ones_like(h))
    rks_t = torch.stack(rks)

    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rks_t ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.stack(rows), torch.stack(b)

    d1_stack = torch.stack(d1s, dim=1) if d1s else None
    x_t_ = ns.std(t) / ns.std(t_prev[-1]) * x - alpha_t * h_phi_1 * model_prev_0
    x_t = x_t_
    if d1_stack is not None:
        # Order 2 uses the fixed rho = 1/2 from the paper instead of solving the 1x1 system.
        rhos_p = b_vec.new_tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        x_t = x_t_ - alpha_t * b_h * torch.einsum("k,bk...->b...", rhos_p, d1_stack)

    model_t = None
    if use_corrector:
        rhos_c = b_vec.new_tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b_vec)
        model_t = data_fn(x_t, t)
        corr = rhos_c[-1] * (model_t - model_prev_0)
        if d1_stack is not None:
            corr = torch.einsum("k,bk...->b...", rhos_c[:-1], d1_stack) + corr
        x_t = x_t_ - alpha_t * b_h * corr
    return x_t, model_t


def _sample_unipc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None,
                  callback: StepCallback | None, variant: str) -> torch.Tensor:
    extra_args, s_in = _setup(x, extra_args)
    if len(sigmas) <= 1:
        return x
    ns = _VPSchedule()
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001  # lambda is infinite at sigma 0; the solver stops just above it.
    steps = len(ts) - 1
    # ComfyUI uses order min(3, steps - 1), i.e. 0 for a single step (no update at all); 1 is the sane minimum.
    order = max(1, min(3, len(ts) - 2))

    def data_fn(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Model call in sigma space; x0 recovered through the noise prediction as the reference solver does.
        sigma = t * s_in
        x_in = x_vp * append_dims((sigma**2 + 1.0) ** 0.5, x_vp.ndim)
        eps = (x_in - model(x_in, sigma, **extra_args)) / append_dims(sigma, x_vp.ndim)
        return (x_vp - ns.std(t) * eps) / ns.alpha(t)

    def report(i: int, x_vp: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> None:
        _report(callback, i, x_vp / ns.alpha(t), t, denoised)

    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)  # into VP space
    model_prev, t_prev = [data_fn(x, ts[0])], [ts[0]]
    if steps > 1:
        report(0, x, ts[0], model_prev[-1])
    for step in range(1, steps + 1):
        # Warm-up steps use the orders available so far; the last steps lower the order again (lower_order_final).
        step_order = step if step < order else min(order, steps + 1 - step)
        use_corrector = step < steps  # the last step's corrector would need a model call whose output is unused
        x, model_x = _unipc_step(ns, x, model_prev, t_prev, ts[step], step_order, use_corrector, variant, data_fn)
        if step < steps:
            model_prev.append(data_fn(x, ts[step]) if model_x is None else model_x)
            t_prev.append(ts[step])
            del model_prev[:-order], t_prev[:-order]
        if step <= steps - 2 or step == steps:
            report(min(step, steps - 1), x, ts[step], model_prev[-1])
    return x / ns.alpha(ts[-1])


@torch.no_grad()
def sample_uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                  callback: StepCallback | None = None, disable: bool | None = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, arXiv:2302.04867), multistep order <= 3, data prediction, variant B(h) = h (bh1).

    Runs in VP space on sigmas, the last sigma 0 replaced by 0.001; `steps` model calls for `steps` steps.
    """
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh1")


@torch.no_grad()
def sample_uni_pc_bh2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                      extra_args: dict[str, Any] | None = None, callback: StepCallback | None = None,
                      disable: bool | None = None) -> torch.Tensor:
    """UniPC as `sample_uni_pc` with B(h) = e^h - 1 (bh2), recommended by the paper for guided sampling."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, "bh2")


# ComfyUI's names in its order; "ddim" is Euler there (DDIM's deterministic update is the Euler step in sigma).
SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ddim": sample_euler,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
