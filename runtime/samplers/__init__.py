"""Samplers: each one short function that runs a denoiser from noise to a sample.

A sampler sees only a model ``model(x, t) -> output`` (x the batch, t a LongTensor of shape (B,);
the output is ε or v as ``schedule.prediction_type`` says), the initial noise ``x`` (already
scaled: the initial noise σ is 1 for all of these), a :class:`~dlab.runtime.schedules.NoiseSchedule`
and a step count. Progress goes to ``callback(StepInfo)``; a callback that returns True cancels
the run, which then raises :class:`SamplingCancelled` with the latest sample. Only True itself
cancels, not any truthy value, so that ``callback=lambda i: bar.update()`` cannot stop a run.

Every sampler matches the corresponding diffusers scheduler step for step (see tests). Schedule
arithmetic is done in float64, tensor updates in at least float32, and each new sample is cast
back to ``x.dtype``. Random noise is drawn on the CPU from ``generator`` and then moved, so a
seed gives the same image on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dlab.errors import BadInput
from dlab.runtime.schedules import NoiseSchedule


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after step ``index`` (0-based) of ``total``, taken at training timestep ``t``."""

    index: int
    total: int
    t: int
    x: torch.Tensor
    x0_pred: torch.Tensor


class SamplingCancelled(Exception):
    """The callback asked to stop; ``x`` is the sample after step ``step`` (0-based)."""

    def __init__(self, x: torch.Tensor, step: int, total: int):
        super().__init__(f"sampling cancelled after step {step + 1} of {total}")
        self.x = x
        self.step = step


# Helpers shared by the sampler modules. They are defined before those modules are imported
# below, so that each module can import them from this package.


def _grid(schedule: NoiseSchedule, num_steps: int, spacing: str, steps_offset: int, drop_endpoint=False) -> list[int]:
    """The sampler's timesteps as ints, refusing an ε-model that would have to start at zero SNR."""
    timesteps = schedule.timesteps(num_steps, spacing, steps_offset, drop_endpoint=drop_endpoint).tolist()
    if schedule.prediction_type == "epsilon" and float(schedule.alphas_cumprod[timesteps[0]]) == 0.0:
        raise BadInput(
            f"an epsilon-prediction model cannot start at t={timesteps[0]}, where this zero-terminal-SNR "
            "schedule has no signal; use a v_prediction model or 'leading' spacing"
        )
    return timesteps


def _check_clip(clip_sample_range: float) -> None:
    if not clip_sample_range > 0:
        raise BadInput(f"clip_sample_range must be positive, got {clip_sample_range}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype updates are computed in: x's own, but at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


def _denoise(model: Model, x: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """One model call for the whole batch at timestep t."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return model(x, tt).to(dtype)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the CPU (device-independent for a given seed)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def _report(callback, index: int, total: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    """Tell the callback about a finished step; raise SamplingCancelled if it returns True."""
    if callback is not None and callback(StepInfo(index, total, t, x, x0.to(x.dtype))) is True:
        raise SamplingCancelled(x, index, total)


from dlab.runtime.samplers.ddim import sample_ddim
from dlab.runtime.samplers.ddpm import sample_ddpm
from dlab.runtime.samplers.dpmpp_2m import sample_dpmpp_2m

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def sample(name: str, model: Model, x: torch.Tensor, schedule: NoiseSchedule, num_steps: int, **options) -> torch.Tensor:
    """Run the sampler called ``name`` (a key of :data:`SAMPLERS`) with the given options."""
    try:
        sampler = SAMPLERS[name]
    except KeyError:
        raise BadInput(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
    return sampler(model, x, schedule, num_steps, **options)


__all__ = [
    "SAMPLERS",
    "SamplingCancelled",
    "StepInfo",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
]
