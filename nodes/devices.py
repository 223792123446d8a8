"""Device and precision policy: one place decides where models run and in which dtype."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DevicePolicy:
    device: torch.device
    precision: str  # auto | fp32 | fp16 | bf16

    def _accelerated(self) -> bool:
        return self.device.type != "cpu"

    def _bf16_ok(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _fp16_ok(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 7

    def unet_dtype(self) -> torch.dtype:
        if self.precision != "auto":
            return DTYPES[self.precision]
        # fp16 on GPUs that handle it (as ComfyUI chooses for SD1.x), fp32 on CPU.
        if self._fp16_ok():
            return torch.float16
        return torch.bfloat16 if self._bf16_ok() else torch.float32

    def text_dtype(self) -> torch.dtype:
        return self.unet_dtype()

    def describe(self) -> str:
        """Everything of the policy that changes a loaded model's results: part of its cache signature."""
        return (f"{self.device}|unet={self.unet_dtype()}|text={self.text_dtype()}|vae={self.vae_dtype()}")

    def vae_dtype(self) -> torch.dtype:
        if self.precision != "auto":
            return DTYPES[self.precision]
        # fp16 VAEs can overflow into black images; bf16 keeps fp32's range.
        return torch.bfloat16 if self._bf16_ok() else torch.float32


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
POLICY = DevicePolicy(torch.device("cpu"), "auto")


def configure(device: str = "auto", precision: str = "auto", threads: int | None = None) -> DevicePolicy:
    """Pick the device (`auto` prefers CUDA) and precision; `threads` sets torch's CPU threads."""
    global POLICY
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    if precision not in ("auto", *DTYPES):
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    POLICY = DevicePolicy(torch.device(device), precision)
    return POLICY
