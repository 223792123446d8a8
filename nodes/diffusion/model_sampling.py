"""Noise schedule of an epsilon-prediction discrete-time diffusion model (SD1.x).

The model is trained on 1000 DDPM steps with a "scaled linear" beta schedule (Rombach et al. 2022,
latent diffusion). Samplers work in k-diffusion's sigma parameterisation (Karras et al. 2022):
x = x0 + sigma * eps with sigma = sqrt((1 - alpha_bar) / alpha_bar).
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
    ) -> None:
        super().__init__()
        if beta_schedule == "scaled_linear":
            betas = scaled_linear_betas(beta_start, beta_end, num_timesteps)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        # Both tables are rounded from float64 to float32 once, so every schedule sees the same numbers.
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

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
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep: log-sigma interpolated linearly between neighbouring steps."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """UNet input: x / sqrt(sigma^2 + 1), i.e. the noisy latent rescaled to unit variance (VP space)."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x / (sigma**2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Denoised estimate from an epsilon prediction: x0 = x - eps * sigma."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x - model_output * sigma

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
