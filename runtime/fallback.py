"""Run a generation the way the plan said, and recover when the machine disagrees.

- Out of memory (CUDA's `OutOfMemoryError`, or the CPU allocator failing): halve the batch and run
  it in chunks, down to one image. The chunks take consecutive slices of the seed's noise, so DDIM
  (η = 0) images are identical to an unsplit run.
- Non-finite output in fp16/bf16 (overflow): run again in fp32.

Every recovery is reported through `report` and recorded in the images' parameters (`fallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dlab.runtime.backends import Backend
from dlab.runtime.image import ImageModel, ImageRequest, ImageResult, generate_images, initial_noise


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())) or isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "failed to allocate memory" in text)


def _merge(parts: list[ImageResult], batch: int) -> ImageResult:
    first = parts[0]
    params = dict(first.params, batch=batch, seed=first.params["seed"])
    traces = [p.trace for p in parts]
    return ImageResult(
        images=np.concatenate([p.images for p in parts]),
        params=params,
        unknown_words=first.unknown_words,
        seconds=sum(p.seconds for p in parts),
        trace=np.concatenate(traces, axis=1) if all(t is not None for t in traces) else None,
        finite=all(p.finite for p in parts),
    )


def _run_chunked(model, request, backend, chunk, callback, trace_frames) -> ImageResult:
    noise, _ = initial_noise(request.seed, request.batch, model.image_size)
    parts = []
    for start in range(0, request.batch, chunk):
        n = min(chunk, request.batch - start)
        # The noise is the full batch's slice; the seed only drives DDPM/η>0 noise, and differs per
        # chunk so that chunks do not repeat one noise sequence.
        sub = request.model_copy(update={"batch": n, "seed": request.seed + start})
        parts.append(generate_images(model, sub, backend, callback=callback, trace_frames=trace_frames,
                                     noise=noise[start:start + n]))
    return _merge(parts, request.batch)


def generate_with_fallbacks(
    model: ImageModel,
    request: ImageRequest,
    make_backend: Callable[[str], Backend],
    precision: str,
    callback=None,
    trace_frames: int = 0,
    report: Callable[[str], object] = print,
) -> ImageResult:
    """`make_backend(precision)` builds the backend; see the module docstring for what is retried."""
    fallbacks: list[str] = []
    state = {"chunk": request.batch}

    def run(backend) -> ImageResult:
        while True:
            try:
                return _run_chunked(model, request, backend, state["chunk"], callback, trace_frames)
            except Exception as e:
                if not is_out_of_memory(e) or state["chunk"] == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                new = max(1, state["chunk"] // 2)
                note = f"out of memory at batch {state['chunk']}: retrying in batches of {new}"
                report(note)
                fallbacks.append(note)
                state["chunk"] = new

    result = run(make_backend(precision))
    if not result.finite and precision in ("fp16", "bf16"):
        note = f"non-finite output in {precision}: redone in fp32"
        report(note)
        fallbacks.append(note)
        result = run(make_backend("fp32"))  # fp32 needs more memory: the same halving applies
    if fallbacks:
        result.params["fallbacks"] = fallbacks
    return result
