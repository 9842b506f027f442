"""Backends answer one question: "denoise this batch". Everything else (guidance, sampling, the
loop) is shared, so eager PyTorch and (later) ONNX Runtime plug into the same sampler.

A backend is called as ``backend(x, t, context) -> model output`` with x (B, C, H, W) float32,
t a LongTensor (B,), and context the text encoder's ``(embedding, mask)``; it returns float32.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Protocol

import torch

from dlab.errors import BadInput

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Backend(Protocol):
    name: str
    device: str
    precision: str

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor: ...


def resolve_precision(requested: str, device: str, cpu_fast_bf16: bool = False, gpu_cc: tuple[int, int] | None = None) -> Precision:
    """`auto` → what runs fastest and correctly on this device: on the CPU bf16 autocast only with
    AMX / AVX-512-bf16 (without them bf16 is emulated and slower than fp32); on CUDA bf16 from
    compute capability 8.0, fp16 below."""
    if requested not in ("auto", *PRECISIONS):
        raise BadInput(f"unknown precision {requested!r}; choose auto, {', '.join(PRECISIONS)}")
    if requested != "auto":
        if device == "cpu" and requested == "fp16":
            raise BadInput("fp16 is not supported on the CPU; use fp32 or bf16")
        return requested  # type: ignore[return-value]
    if device == "cpu":
        return "bf16" if cpu_fast_bf16 else "fp32"
    return "bf16" if gpu_cc is not None and gpu_cc >= (8, 0) else "fp16"


class EagerBackend:
    """The denoiser run by PyTorch itself, under autocast for bf16/fp16."""

    name = "eager"

    def __init__(self, unet: torch.nn.Module, device: str = "cpu", precision: Precision = "fp32"):
        if precision not in PRECISIONS:
            raise BadInput(f"unknown precision {precision!r}")
        self.unet = unet.to(device).eval()
        self.device = device
        self.precision = precision
        self.calls = 0

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=_DTYPES[self.precision])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        emb, mask = context
        self.calls += 1
        with torch.inference_mode(), self._autocast():
            out = self.unet(x.to(self.device), t.to(self.device), emb.to(self.device), mask.to(self.device))
        return out.float()
