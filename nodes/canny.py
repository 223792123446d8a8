"""Canny edge detection in torch (kornia is not a dependency).

The classic algorithm of J. Canny, "A Computational Approach to Edge Detection", IEEE PAMI 8(6), 1986, with
the constants and steps of kornia's `kornia.filters.canny` (which ComfyUI's Canny node calls), so the edges
match: grey = 0.299 R + 0.587 G + 0.114 B; a 5×5 Gaussian blur (σ = 1, reflect padding, applied as two 1-D
passes); unnormalised 3×3 Sobel gradients (replicate padding); magnitude √(gx² + gy² + 1e-6); gradient angle
rounded to the nearest 45°; non-maximum suppression against the two neighbours along that direction (zero
outside the image); thresholds: above `low` is weak (0.5), above `high` strong (1); hysteresis: a weak pixel
becomes strong while any of its 8 neighbours is strong, repeated until nothing changes; weak pixels left over
are dropped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# (row, column) offset of the neighbour for each 45° direction index 0..7 (angle 0° = +x, 90° = +y, rows down).
_NEIGHBOURS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    t = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    kernel = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    kernel = kernel / kernel.sum()
    pad = size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[y + dy, x + dx], zero outside the image."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Edges of [B,C,H,W] images (C = 1 or 3) as a [B,1,H,W] map of 0s and 1s."""
    x = image.float()
    if x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = _gaussian_blur(x)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    gx, gy = gradients[:, 0:1], gradients[:, 1:2]
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-6)
    angle = torch.round(torch.rad2deg(torch.atan2(gy, gx)) / 45) * 45
    forward = ((angle / 45) % 8).long()
    backward = ((angle / 45 + 4) % 8).long()
    neighbours = torch.cat([_shifted(magnitude, dy, dx) for dy, dx in _NEIGHBOURS], dim=1)
    ahead = torch.gather(neighbours, 1, forward)
    behind = torch.gather(neighbours, 1, backward)
    magnitude = magnitude * ((magnitude > ahead) & (magnitude > behind))
    edges = (magnitude > low) * 0.5 + (magnitude > high) * 0.5
    while True:
        strong = edges == 1.0
        near_strong = torch.zeros_like(strong)
        for dy, dx in _NEIGHBOURS:
            near_strong |= _shifted(strong.float(), dy, dx) == 1.0
        grown = torch.where((edges == 0.5) & near_strong, 1.0, edges)
        if torch.equal(grown, edges):
            break
        edges = grown
    return (edges == 1.0).to(image.dtype)
