"""Classifier-free guidance: turn a conditional denoiser into the ``model(x, t)`` a sampler calls."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlab.errors import BadInput


Context = torch.Tensor | tuple | None
Backend = Callable[[torch.Tensor, torch.Tensor, Context], torch.Tensor]


def _batch_contexts(uncond: Context, cond: Context) -> Context:
    """[uncond, cond] concatenated along the batch, elementwise for tuples (e.g. (embedding, mask)).

    A batch-1 unconditional context (one negative prompt) is repeated to the conditional batch.
    """
    if isinstance(cond, tuple):
        if not isinstance(uncond, tuple) or len(uncond) != len(cond):
            raise BadInput("conditional and unconditional contexts must have the same structure")
        return tuple(_batch_contexts(u, c) for u, c in zip(uncond, cond))
    if cond is None and uncond is None:
        return None
    if not isinstance(cond, torch.Tensor) or not isinstance(uncond, torch.Tensor):
        raise BadInput("conditional and unconditional contexts must have the same structure")
    if uncond.shape[0] == 1 and cond.shape[0] > 1:
        uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
    return torch.cat([uncond, cond])


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale φ (Lin et al. 2023, sec. 3.4, eq. 15–16), as diffusers' ``rescale_noise_cfg``.

        x_rescaled = x_cfg · std(x_cond) / std(x_cfg)          (per sample, over all other dims)
        x_final = φ x_rescaled + (1 − φ) x_cfg
    """
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def cfg_model(
    backend: Backend,
    cond: Context,
    uncond: Context,
    scale: float,
    rescale: float = 0.0,
    interval: tuple[float, float] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``backend(x, t, context)`` for classifier-free guidance (Ho & Salimans 2022).

        out = out_uncond + scale · (out_cond − out_uncond)

    (the paper's (1 + w) ε(z, c) − w ε(z) with scale = 1 + w). Both branches run in one backend
    call on the batch [x, x] with contexts [uncond, cond]. With scale == 1 the unconditional
    branch cannot matter, and the backend is called once on the conditional batch only.
    ``rescale`` is φ of :func:`rescale_guidance`, applied to the guided output.

    ``interval = (t_lo, t_hi)`` applies guidance only where t_lo ≤ t < t_hi, in training timesteps,
    and the plain conditional output elsewhere (Kynkäänniemi et al. 2024, "Applying guidance in a
    limited interval improves sample and distribution quality"): at the noisiest steps the two
    branches' predictions are far apart and the extrapolation overshoots the layout (a "large"
    shape grows past the large band), while at the last steps guidance adds nothing. A step whose
    timesteps all fall outside the interval costs one conditional forward instead of the batched two.
    """
    if not 0.0 <= rescale <= 1.0:
        raise BadInput(f"guidance rescale must be between 0 and 1, got {rescale}")
    if interval is not None:
        lo, hi = interval
        if not (0 <= lo < hi):
            raise BadInput(f"guidance interval must satisfy 0 <= start < end, got {lo}..{hi}")
    if scale == 1:
        # The guided output is the conditional one, and rescaling it to its own std is a no-op.
        return lambda x, t: backend(x, t, cond)

    context = _batch_contexts(uncond, cond)

    def both(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = backend(torch.cat([x, x]), torch.cat([t, t]), context).chunk(2)
        out = out_uncond + scale * (out_cond - out_uncond)
        return rescale_guidance(out, out_cond, rescale) if rescale else out

    if interval is None:
        return both

    def limited(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inside = (t >= interval[0]) & (t < interval[1])
        if bool(inside.all()):
            return both(x, t)
        plain = backend(x, t, cond)
        if not bool(inside.any()):
            return plain
        shape = (-1,) + (1,) * (x.ndim - 1)
        return torch.where(inside.reshape(shape), both(x, t), plain)

    return limited
