"""DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239), as diffusers' ``DDPMScheduler``."""

from __future__ import annotations

import math

import torch

from dlab.runtime.samplers import (
    Model,
    _check_clip,
    _denoise,
    _grid,
    _noise,
    _report,
    _work_dtype,
)
from dlab.runtime.schedules import NoiseSchedule


def sample_ddpm(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Draw x_{t'} ~ q(x_{t'} | x_t, x̂_0) along the grid t > t' > … , ending at ᾱ = 1.

    With x̂_0 from the model (eq. 15), optionally clipped to ±clip_sample_range, and the
    one-jump α = ᾱ_t / ᾱ_{t'}, β = 1 − α between neighbouring grid points, the posterior of
    eq. 6–7 gives

        μ̃ = √ᾱ_{t'} β / (1 − ᾱ_t) · x̂_0 + √α (1 − ᾱ_{t'}) / (1 − ᾱ_t) · x_t
        β̃ = (1 − ᾱ_{t'}) / (1 − ᾱ_t) · β            ("fixed_small", clamped at 1e-20)
        x_{t'} = μ̃ + √β̃ z,  z ~ N(0, I), noise only while t > 0

    t' is the next grid timestep (ᾱ_{t'} = 1 after the last), as in diffusers, so any spacing
    works; with all T steps this is the original sampler.
    """
    _check_clip(clip_sample_range)
    timesteps = _grid(schedule, num_steps, spacing, steps_offset)
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    dtype = _work_dtype(x)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < total else 1.0
        alpha = a_t / a_prev
        beta = 1.0 - alpha

        x_t = x.to(dtype)
        x0 = schedule.to_x0(_denoise(model, x, t, dtype), x_t, t)
        if clip_sample:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        x_prev = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x_t
        if t > 0:
            variance = max((1 - a_prev) / (1 - a_t) * beta, 1e-20)
            x_prev = x_prev + math.sqrt(variance) * _noise(x, generator).to(dtype)
        x = x_prev.to(x.dtype)
        _report(callback, i, total, t, x, x0)
    return x
