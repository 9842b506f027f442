"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095), as diffusers' default ``DPMSolverMultistepScheduler``."""

from __future__ import annotations

import dataclasses
import math

import torch

from dlab.runtime.samplers import (
    Model,
    _check_clip,
    _denoise,
    _grid,
    _report,
    _work_dtype,
)
from dlab.runtime.schedules import NoiseSchedule


def sample_dpmpp_2m(
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
    """Second-order multistep solver of the diffusion ODE in data prediction (Algorithm 2).

    With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t / σ_t), step h = λ_{t'} − λ_t, the previous
    step h₋ and r = h₋ / h, the update from t to t' with data predictions x̂_0 (now) and x̂₋ (before) is

        D = (1 + 1/(2r)) x̂_0 − 1/(2r) · x̂₋                 (midpoint form; D = x̂_0 on the first step)
        x_{t'} = (σ_{t'} / σ_t) x_t − α_{t'} (e^{−h} − 1) D

    The last step goes to σ = 0 with the first-order update, which reduces to x_{t'} = x̂_0
    (diffusers: ``lower_order_final``, ``final_sigmas_type="zero"``). The grid is n + 1 nodes with
    t = 0 dropped (see ``NoiseSchedule.timesteps(drop_endpoint=True)``). A zero-terminal-SNR
    schedule has σ/α = ∞ at T − 1; like diffusers, ᾱ there is taken as 2⁻²⁴.
    ``clip_sample`` clips x̂_0 (an addition; diffusers' solver has no such option). The solver is
    deterministic: ``generator`` is accepted for a uniform signature and unused.
    """
    _check_clip(clip_sample_range)
    timesteps = _grid(schedule, num_steps, spacing, steps_offset, drop_endpoint=True)
    if float(schedule.alphas_cumprod[-1]) == 0.0:
        alphas_cumprod = schedule.alphas_cumprod.clone()
        alphas_cumprod[-1] = 2.0**-24
        schedule = dataclasses.replace(schedule, alphas_cumprod=alphas_cumprod)
    alphas_cumprod = schedule.alphas_cumprod.tolist()

    def alpha_sigma_lambda(t: int) -> tuple[float, float, float]:
        a = alphas_cumprod[t]
        return math.sqrt(a), math.sqrt(1 - a), 0.5 * (math.log(a) - math.log1p(-a))

    dtype = _work_dtype(x)
    total = len(timesteps)
    x0_before, h_before = None, None
    for i, t in enumerate(timesteps):
        x_t = x.to(dtype)
        x0 = schedule.to_x0(_denoise(model, x, t, dtype), x_t, t)
        if clip_sample:
            x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        if i + 1 == total:
            x_next = x0
        else:
            _, sigma_t, lambda_t = alpha_sigma_lambda(t)
            alpha_next, sigma_next, lambda_next = alpha_sigma_lambda(timesteps[i + 1])
            h = lambda_next - lambda_t
            if x0_before is None:
                d = x0
            else:
                r = h_before / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_before
            x_next = (sigma_next / sigma_t) * x_t - (alpha_next * math.expm1(-h)) * d
            x0_before, h_before = x0, h
        x = x_next.to(x.dtype)
        _report(callback, i, total, t, x, x0)
    return x
