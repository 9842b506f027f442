"""Run-time recovery: out of memory → halve the batch; non-finite fp16/bf16 output → fp32 (both forced)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlab.runtime.backends import EagerBackend
from dlab.runtime.fallback import generate_with_fallbacks, is_out_of_memory
from dlab.runtime.image import ImageModel, ImageRequest, generate_images


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return ImageModel.load(tiny_model_path)


class OomAbove(EagerBackend):
    """Raises what CUDA raises when asked for more than `limit` samples in one call."""

    def __init__(self, unet, limit):
        super().__init__(unet)
        self.limit, self.refused = limit, 0

    def __call__(self, x, t, context):
        if x.shape[0] > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(x, t, context)


class NanInHalf(EagerBackend):
    def __call__(self, x, t, context):
        out = super().__call__(x, t, context)
        return out * float("nan") if self.precision != "fp32" else out


def test_out_of_memory_halves_the_batch_and_keeps_the_images(model):
    req = ImageRequest(prompt="a red circle", steps=4, guidance=3.0, seed=11, batch=8)
    reference = generate_images(model, req, EagerBackend(model.unet))
    notes = []
    backend = OomAbove(model.unet, limit=4)  # CFG doubles the call: batches of 2 images fit
    result = generate_with_fallbacks(model, req, lambda p: backend, "fp32", report=notes.append)
    assert backend.refused == 2  # 8 refused, then 4 refused, then 2 runs
    assert notes == ["out of memory at batch 8: retrying in batches of 4",
                     "out of memory at batch 4: retrying in batches of 2"]
    assert result.params["fallbacks"] == notes and result.params["batch"] == 8
    assert result.images.shape == reference.images.shape
    # DDIM: the chunks take the same noise slices, so the same images (CPU kernels may round a batch of
    # 2 differently from a batch of 8 in the last bit: at most one level of 255)
    assert np.abs(result.images.astype(int) - reference.images.astype(int)).max() <= 1


def test_out_of_memory_at_batch_one_is_raised(model):
    req = ImageRequest(prompt="a red circle", steps=2, guidance=3.0, seed=1, batch=1)
    with pytest.raises(torch.OutOfMemoryError):
        generate_with_fallbacks(model, req, lambda p: OomAbove(model.unet, limit=0), "fp32", report=lambda m: None)


def test_non_finite_half_precision_output_is_redone_in_fp32(model):
    req = ImageRequest(prompt="a blue square", steps=4, guidance=3.0, seed=5, batch=2)
    made = []

    def make(precision):
        made.append(precision)
        return NanInHalf(model.unet, precision=precision)

    notes = []
    result = generate_with_fallbacks(model, req, make, "bf16", report=notes.append)
    assert made == ["bf16", "fp32"] and notes == ["non-finite output in bf16: redone in fp32"]
    assert result.finite and result.params["precision"] == "fp32" and result.params["fallbacks"] == notes
    fp32 = generate_images(model, req, EagerBackend(model.unet)).images
    np.testing.assert_array_equal(result.images, fp32)


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
