"""Discrete noise schedules of DDPM-family models, and the sampling grids laid over them.

Notation follows Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", arXiv:2006.11239):
β_t is the variance added at training step t, α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s, for
t = 0 … T−1 (0-based, as in diffusers). The schedule is kept in float64 on the CPU; values
handed to a tensor are cast to that tensor's dtype and device at the last moment.

The constructors and the timestep grids reproduce diffusers' schedulers (``beta_schedule``,
``rescale_betas_zero_snr``, ``timestep_spacing``, ``steps_offset``), so that weights trained
against diffusers' schedules run unchanged.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from dlab.errors import BadInput


KINDS = ("scaled_linear", "linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    """β_t, α_t and ᾱ_t of a trained model (float64 CPU tensors of length T), and what it predicts.

    ``prediction_type`` says what the network outputs: ``"epsilon"`` the noise ε (Ho et al. 2020),
    ``"v_prediction"`` the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, sec. 4).

    Methods taking a timestep ``t`` accept a Python int (one step for the whole batch) or an
    integer tensor of shape (B,) (one step per sample).
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    kind: str
    prediction_type: str = "epsilon"

    def _sqrt_ab(self, t: int | torch.Tensor, like: torch.Tensor):
        """(√ᾱ_t, √(1−ᾱ_t)) as Python floats for an int t, else as tensors that broadcast over ``like``."""
        if isinstance(t, numbers.Integral):
            a = float(self.alphas_cumprod[t])
            return math.sqrt(a), math.sqrt(1.0 - a)
        a = self.alphas_cumprod[torch.as_tensor(t).cpu().long().reshape(-1)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        # Square roots in float64 on the CPU; only the results take like's dtype (MPS has no float64).
        return (a.sqrt().to(like.dtype).to(like.device).reshape(shape),
                (1.0 - a).sqrt().to(like.dtype).to(like.device).reshape(shape))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4) with the given noise."""
        sqrt_a, sqrt_b = self._sqrt_ab(t, x0)
        return sqrt_a * x0 + sqrt_b * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        sqrt_a, sqrt_b = self._sqrt_ab(t, x0)
        return sqrt_a * noise - sqrt_b * x0

    def to_epsilon(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The noise ε implied by the model output: itself, or ε = √ᾱ_t v + √(1−ᾱ_t) x_t."""
        if self.prediction_type == "epsilon":
            return model_output
        sqrt_a, sqrt_b = self._sqrt_ab(t, x_t)
        return sqrt_a * model_output + sqrt_b * x_t

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The clean sample implied by the model output.

        ε-prediction: x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t (Ho et al. 2020, eq. 15);
        v-prediction: x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v.
        """
        sqrt_a, sqrt_b = self._sqrt_ab(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - sqrt_b * model_output) / sqrt_a
        return sqrt_a * x_t - sqrt_b * model_output

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021), float64; 0 at a zero-SNR terminal step."""
        a = self.alphas_cumprod[torch.as_tensor(t).cpu().long()]
        return a / (1.0 - a)

    def timesteps(
        self,
        num_inference_steps: int,
        spacing: str = "leading",
        steps_offset: int = 0,
        *,
        drop_endpoint: bool = False,
    ) -> torch.Tensor:
        """The descending grid of training timesteps a sampler evaluates the model at.

        ``"leading"``: 0, r, 2r, … with r = T // n, plus ``steps_offset``;
        ``"trailing"``: round(T − k T/n) − 1 for k = 0 … n−1, so the grid starts at T−1;
        ``"linspace"``: n points from 0 to T−1 rounded (Lin et al. 2023, Table 2).
        ``steps_offset`` applies to ``"leading"`` only, as in diffusers.

        ``drop_endpoint=True`` gives DPMSolverMultistepScheduler's grid: n + 1 nodes laid out by
        the same rule (for "leading" and "linspace") and the last one, t = 0, dropped, because the
        solver's last step lands on σ = 0 instead of evaluating the model there.

        One deliberate difference from diffusers 0.42: for some n (e.g. 61 of 1000) diffusers'
        trailing grid, built with a float-step ``np.arange``, gets an extra node at t = −1; here it
        has exactly n nodes, the same first n.
        """
        T = self.num_train_timesteps
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= T:
            raise BadInput(f"number of steps must be an integer from 1 to {T}, got {n!r}")
        n = int(n)
        if spacing not in SPACINGS:
            raise BadInput(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, numbers.Integral) or steps_offset < 0:
            raise BadInput(f"steps_offset must be a non-negative integer, got {steps_offset!r}")

        nodes = n + 1 if drop_endpoint else n
        if spacing == "linspace":
            grid = np.linspace(0, T - 1, nodes).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            grid = (np.arange(0, nodes) * (T // nodes)).round()[::-1].astype(np.int64) + steps_offset
        else:
            grid = np.round(np.arange(T, 0, -T / n))[:n].astype(np.int64) - 1
        if drop_endpoint and spacing != "trailing":
            grid = grid[:-1]

        if grid[0] >= T:
            raise BadInput(
                f"steps_offset={steps_offset} puts the first of {n} leading steps at t={grid[0]}, "
                f"past the last training step {T - 1}"
            )
        if np.any(np.diff(grid) >= 0):
            raise BadInput(f"{n} steps with {spacing!r} spacing repeat timesteps out of {T}; use fewer steps")
        return torch.from_numpy(grid.copy())


def _cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """β_t = min(1 − ᾱ(t+1/T)/ᾱ(t/T), 0.999), ᾱ(s) = cos²((s + 0.008)/1.008 · π/2) (Nichol & Dhariwal 2021, eq. 17)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)], dtype=torch.float64
    )


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ_t so that √ᾱ_{T−1} = 0 and √ᾱ_0 is unchanged (Lin et al. 2023, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alphas_bar = sqrt_ab**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def make_schedule(
    kind: str = "scaled_linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    rescale_zero_terminal_snr: bool = False,
    prediction_type: str = "epsilon",
) -> NoiseSchedule:
    """Build a schedule the way diffusers does for ``beta_schedule=kind``, in float64.

    ``"linear"``: β evenly spaced from beta_start to beta_end (Ho et al. 2020, sec. 4);
    ``"scaled_linear"``: √β evenly spaced (Stable Diffusion's default, 0.00085 … 0.012);
    ``"cosine"``: diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021), beta_start/end unused.
    ``rescale_zero_terminal_snr`` makes ᾱ_{T−1} = 0 (Lin et al. 2023, Algorithm 1); such a model
    should predict v, since ε carries no information about x_0 at zero SNR.
    """
    if kind not in KINDS:
        raise BadInput(f"unknown noise schedule {kind!r}; choose one of {', '.join(KINDS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise BadInput(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    T = num_train_timesteps
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise BadInput(f"num_train_timesteps must be an integer of at least 2, got {T!r}")
    if kind != "cosine" and not 0 < beta_start <= beta_end < 1:
        raise BadInput(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")

    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    else:
        betas = _cosine_betas(T)
    if rescale_zero_terminal_snr:
        betas = _rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    return NoiseSchedule(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=torch.cumprod(alphas, dim=0),
        num_train_timesteps=T,
        kind=kind,
        prediction_type=prediction_type,
    )
