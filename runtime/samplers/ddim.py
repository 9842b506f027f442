"""DDIM sampling (Song et al. 2021, arXiv:2010.02502), as diffusers' ``DDIMScheduler``."""

from __future__ import annotations

import math

import torch

from dlab.errors import BadInput
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


def sample_ddim(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    eta: float = 0.0,
    set_alpha_to_one: bool = True,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Generalised (non-Markovian) reverse steps; deterministic for eta = 0.

    With x̂_0 and ε̂ from the model (ε̂ from the unclipped output), eq. 12 reads

        x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,   z ~ N(0, I)
        σ = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'})          (eq. 16)

    η = 0 is DDIM, η = 1 DDPM's posterior variance. As in diffusers, t' = t − T // n whatever the
    spacing (with "trailing" or "linspace" it need not be the next grid point), and after the
    last step ᾱ_{t'} is 1 if ``set_alpha_to_one`` (diffusers' default) else ᾱ_0 (Stable
    Diffusion's configs). With eta > 0, noise is drawn at every step, the last included.
    """
    if not 0.0 <= eta <= 1.0:
        raise BadInput(f"eta must be between 0 and 1, got {eta}")
    _check_clip(clip_sample_range)
    timesteps = _grid(schedule, num_steps, spacing, steps_offset)
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    final_alpha_cumprod = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    jump = schedule.num_train_timesteps // num_steps
    dtype = _work_dtype(x)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t - jump] if t - jump >= 0 else final_alpha_cumprod

        x_t = x.to(dtype)
        output = _denoise(model, x, t, dtype)
        x0 = schedule.to_x0(output, x_t, t)
        eps = schedule.to_epsilon(output, x_t, t)
        if clip_sample:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x_prev = x_prev + sigma * _noise(x, generator).to(dtype)
        x = x_prev.to(x.dtype)
        _report(callback, i, total, t, x, x0)
    return x
