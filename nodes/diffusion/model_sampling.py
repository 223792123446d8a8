"""Noise schedule and prediction type of a discrete-time diffusion model (SD1.x, SD2.x, SDXL).

The model is trained on 1000 DDPM steps with a "scaled linear" beta schedule (Rombach et al. 2022,
latent diffusion). Samplers work in k-diffusion's sigma parameterisation (Karras et al. 2022):
x = x0 + sigma * eps with sigma = sqrt((1 - alpha_bar) / alpha_bar).

Prediction types (ComfyUI's ModelSamplingDiscrete node): `eps` (the network predicts the noise), `v_prediction`
(v = alpha·eps − sigma_t·x0, Salimans & Ho 2022; SD2-768), `x0` (the clean latent itself) and `lcm` (a
latent consistency model: 50 of the 1000 timesteps, outputs through the consistency boundary condition).
`zsnr` rescales the schedule to zero terminal SNR (Lin et al. 2023).
"""

from __future__ import annotations

import torch


def scaled_linear_betas(beta_start: float, beta_end: float, num_steps: int) -> torch.Tensor:
    """Betas evenly spaced in sqrt(beta), in float64 (latent diffusion's 'scaled_linear' schedule)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def _reshape_sigma(sigma: torch.Tensor | float, ndim: int) -> torch.Tensor:
    """Broadcast a scalar or per-batch sigma against a tensor of `ndim` dimensions."""
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


PREDICTIONS = ("eps", "v_prediction", "x0", "lcm")
PREDICTION_ALIASES = {"epsilon": "eps", "v": "v_prediction", "sample": "x0"}  # diffusers' names
LCM_TIMESTEPS = 50


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has (almost) zero SNR (Lin et al. 2023, algorithm 1);
    the last alpha_bar is pinned at 4.9e-8, as ComfyUI does, to keep its sigma finite."""
    alphas_bar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


class ModelSamplingDiscrete(torch.nn.Module):
    """Training sigmas of a 1000-step epsilon-prediction model and the conversions samplers need.

    A `torch.nn.Module` only so that `.to(device)` moves the two buffers; it has no parameters.
    """

    sigmas: torch.Tensor
    log_sigmas: torch.Tensor

    def __init__(
        self,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        zsnr: bool = False,
    ) -> None:
        super().__init__()
        prediction = PREDICTION_ALIASES.get(prediction, prediction)
        if prediction not in PREDICTIONS:
            raise ValueError(f"unsupported prediction type {prediction!r}; expected one of {PREDICTIONS}")
        self.prediction, self.zsnr = prediction, zsnr
        self.config = {"beta_start": beta_start, "beta_end": beta_end, "beta_schedule": beta_schedule,
                       "num_train_timesteps": num_timesteps}
        if beta_schedule == "scaled_linear":
            betas = scaled_linear_betas(beta_start, beta_end, num_timesteps)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        # Both tables are rounded from float64 to float32 once, so every schedule sees the same numbers.
        # Rescaled or subsampled tables are derived from the float32 table (their logs too), as ComfyUI does.
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas.float())
        self.skip_steps = 1
        if prediction == "lcm":  # LCM: the 50 timesteps 19, 39, ..., 999 of the 1000
            self.skip_steps = num_timesteps // LCM_TIMESTEPS
            table = sigmas.float()
            sigmas = torch.stack([table[num_timesteps - 1 - x * self.skip_steps]
                                  for x in range(LCM_TIMESTEPS)]).flip(0)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    @classmethod
    def from_schedule(cls, schedule: dict, prediction: str | None = None, zsnr: bool = False) -> ModelSamplingDiscrete:
        """From a checkpoint's schedule dict (beta_start, beta_end, beta_schedule, num_train_timesteps,
        prediction_type); `prediction` overrides the file's prediction type."""
        return cls(schedule["beta_start"], schedule["beta_end"], schedule["beta_schedule"],
                   schedule["num_train_timesteps"], prediction or schedule.get("prediction_type", "eps"), zsnr)

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma at `percent` of the way through sampling (0 the start): ComfyUI's timestep ranges."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Integer index (int64) of the training sigma nearest to `sigma` in log space, same shape and device."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.log().to(self.log_sigmas.device)
        dists = log_sigma.reshape(1, -1) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        if self.skip_steps > 1:  # LCM: index k of the 50 is training step 20k + 19
            index = index * self.skip_steps + (self.skip_steps - 1)
        return index.to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep: log-sigma interpolated linearly between neighbouring steps."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device)
        if self.skip_steps > 1:
            t = (t - (self.skip_steps - 1)) / self.skip_steps
        t = t.clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """UNet input: x / sqrt(sigma^2 + 1), i.e. the noisy latent rescaled to unit variance (VP space)."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x / (sigma**2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Denoised estimate x0 from the network's output at noisy latent `x` (sigma_data = 1)."""
        s = _reshape_sigma(sigma, x.ndim)
        if self.prediction == "v_prediction":
            return x / (s**2 + 1.0) - model_output * s / (s**2 + 1.0) ** 0.5
        if self.prediction == "x0":
            return model_output
        x0 = x - model_output * s
        if self.prediction == "lcm":  # boundary condition c_skip·x + c_out·x0 at the scaled timestep
            t = self.timestep(torch.as_tensor(sigma)).float() * 10.0
            t = _reshape_sigma(t.reshape(-1) if t.ndim else t, x.ndim)
            c_skip = 0.25 / (t**2 + 0.25)
            c_out = t / (t**2 + 0.25) ** 0.5
            return c_out * x0 + c_skip * x
        return x0

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        """Starting point of sampling at `sigma`: latent + noise * sigma.

        At full denoise the noise is scaled by sqrt(1 + sigma^2) instead, the DDPM prior's standard deviation.
        """
        sigma = _reshape_sigma(sigma, noise.ndim)
        scale = torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Identity for epsilon prediction (kept so hosts can call it uniformly)."""
        return latent
