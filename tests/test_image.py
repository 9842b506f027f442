"""The text-to-image pipeline on a tiny model: determinism, batched guidance, cancellation, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlab.errors import BadInput
from dlab.runtime.backends import EagerBackend, resolve_precision
from dlab.runtime.image import ImageModel, ImageRequest, generate_images
from dlab.runtime.jobs import write_image_result
from dlab.runtime.outputs import read_png_params
from dlab.runtime.samplers import SamplingCancelled


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return ImageModel.load(tiny_model_path)


def gen(model, backend=None, **kw):
    req = ImageRequest(**{"prompt": "a red circle on a black background", "steps": 6, "batch": 2, **kw})
    return generate_images(model, req, backend or EagerBackend(model.unet))


def test_ddim_eta0_same_seed_is_bit_identical(model):
    a, b = gen(model, seed=7), gen(model, seed=7)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, gen(model, seed=8).images)


def test_ddpm_same_seed_same_image_other_seed_other_image(model):
    a, b = gen(model, sampler="ddpm", seed=3), gen(model, sampler="ddpm", seed=3)
    c = gen(model, sampler="ddpm", seed=4)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)


def test_ddim_eta1_is_stochastic_but_seeded(model):
    a, b = gen(model, eta=1.0, seed=5), gen(model, eta=1.0, seed=5)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, gen(model, eta=0.0, seed=5).images)


def spy_backend(model, calls: list):
    """An eager backend that appends (batch, first timestep) to `calls` on every forward."""
    backend = EagerBackend(model.unet)

    class Spy:
        name, device, precision = backend.name, backend.device, backend.precision

        def __call__(self, x, t, ctx):
            calls.append((x.shape[0], int(t[0])))
            return backend(x, t, ctx)

    return Spy()


def test_guidance_runs_both_branches_in_one_call_per_step(model):
    calls = []
    gen(model, spy_backend(model, calls), guidance=3.0, steps=5, batch=3)
    assert [b for b, _ in calls] == [6] * 5  # [uncond, cond] × 3 images, once per step
    calls.clear()
    gen(model, spy_backend(model, calls), guidance=1.0, steps=5, batch=3)
    assert [b for b, _ in calls] == [3] * 5  # s = 1: the conditional branch only


def test_guidance_interval_is_recorded_and_skips_the_unconditional_branch(model):
    calls = []
    r = gen(model, spy_backend(model, calls), guidance=3.0, steps=4, batch=2, seed=2, guidance_interval=(0, 600))
    # trailing spacing, 4 steps: t = 999, 749, 499, 249; guided (batch 4) only below 600
    assert calls == [(2, 999), (2, 749), (4, 499), (4, 249)]
    assert r.params["guidance_interval"] == [0, 600]
    full = gen(model, guidance=3.0, steps=4, batch=2, seed=2)
    assert full.params["guidance_interval"] is None
    assert not np.array_equal(r.images, full.images)
    everywhere = gen(model, guidance=3.0, steps=4, batch=2, seed=2, guidance_interval=(0, 1000))
    assert np.array_equal(everywhere.images, full.images)


@pytest.mark.parametrize("interval", [(600, 600), (0, 1001), (-5, 100)])
def test_bad_guidance_interval(model, interval):
    with pytest.raises(BadInput, match="--guidance-interval"):
        gen(model, guidance_interval=interval)


def test_model_recommended_guidance_interval(tiny_model_path, tmp_path):
    from dlab.errors import BadFile
    from dlab.runtime.image import parse_interval

    assert ImageModel.load(tiny_model_path).default_guidance_interval is None  # recommends nothing: every step
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(tiny_model_path.read_bytes())
    config = json.loads(tiny_model_path.with_suffix(".json").read_text())
    for sampling, expected in (({"guidance_interval": [0, 700]}, (0, 700)), ({"guidance_interval": [100, 1000]}, (100, 1000)),
                               (None, None), ({}, None), ({"guidance_interval": None}, None)):
        weights.with_suffix(".json").write_text(json.dumps({**config, "sampling": sampling}))
        assert ImageModel.load(weights).default_guidance_interval == expected
    # A bad entry is a one-line BadFile when the model loads, not a surprise at the first sample.
    for sampling in ({"guidance_interval": [700, 100]}, {"guidance_interval": [0, 1001]}, {"guidance_interval": "late"},
                     {"guidance_interval": [0]}, {"guidance_interval": [0, 700.9]}, {"guidance_interval": ["0", "700"]},
                     {"guidance_interval": [False, True]}, [0, 700]):
        weights.with_suffix(".json").write_text(json.dumps({**config, "sampling": sampling}))
        with pytest.raises(BadFile, match="sampling"):
            ImageModel.load(weights)
    assert parse_interval("all") is None and parse_interval(" ALL ") is None and parse_interval("0:700") == (0, 700)


def test_negative_prompt_changes_the_image(model):
    a = gen(model, seed=1, guidance=4.0)
    b = gen(model, seed=1, guidance=4.0, negative_prompt="a red circle")
    assert not np.array_equal(a.images, b.images)


def test_cancel_keeps_the_partial_sample(model, tmp_path):
    from dlab.commands import _write_partial

    req = ImageRequest(prompt="a blue square", steps=10, batch=2, seed=0, guidance_interval=(0, 700), eta=0.5)
    backend = EagerBackend(model.unet)
    with pytest.raises(SamplingCancelled) as e:
        generate_images(model, req, backend, callback=lambda info: info.index == 3)
    assert e.value.step == 3 and e.value.x.shape == (2, 3, 32, 32)
    # What the CLI writes on Ctrl-C records the same settings as a finished run, and the step it stopped at.
    written = _write_partial(model, req, backend, e.value, tmp_path)
    assert written.partial and len(written.images) == 2
    params = read_png_params(written.images[0])
    finished = generate_images(model, req, backend).params
    assert {k: params[k] for k in finished} == finished
    assert params["guidance_interval"] == [0, 700] and params["eta"] == 0.5


def test_trace_runs_from_noise_to_the_image(model):
    r = generate_images(model, ImageRequest(prompt="a circle", steps=8, batch=2, seed=0), EagerBackend(model.unet),
                        trace_frames=5)
    assert r.trace.shape == (5, 2, 32, 32, 3)
    assert np.array_equal(r.trace[-1], r.images)
    # the first frame is the initial noise: far from the final image
    assert np.abs(r.trace[0].astype(int) - r.images.astype(int)).mean() > 20


def test_unknown_words_are_reported_not_fatal(model):
    r = gen(model, prompt="a red hexagon on a black background", steps=2)
    assert r.unknown_words == ["hexagon"]


@pytest.mark.parametrize("kw,needle", [
    (dict(steps=0), "--steps"), (dict(steps=1001), "--steps"), (dict(guidance=-1), "--guidance"),
    (dict(batch=0), "--batch"), (dict(batch=100000), "--batch"), (dict(sampler="euler"), "--sampler"),
    (dict(eta=2), "--eta"), (dict(spacing="random"), "--spacing"),
])
def test_bad_requests(kw, needle):
    with pytest.raises(BadInput, match=needle):
        ImageRequest(prompt="a circle", **kw).check()


@pytest.mark.parametrize("prompt", ["", "   ", "x" * 501])
def test_empty_or_absurd_prompt(prompt):
    with pytest.raises(ValueError):
        ImageRequest(prompt=prompt)


def test_outputs_carry_their_parameters(model, tmp_path):
    r = gen(model, seed=11, batch=3)
    w = write_image_result(r, tmp_path)
    assert len(w.images) == 3 and w.grid.exists() and w.manifest.exists()
    p = read_png_params(w.images[1])
    for key in ("prompt", "negative_prompt", "sampler", "steps", "guidance", "seed", "model_hash", "backend", "precision"):
        assert key in p
    assert p["seed"] == 11 and p["index"] == 1 and p["model_hash"] == model.sha256 and p["backend"] == "eager"
    manifest = json.loads(w.manifest.read_text())
    assert manifest["images"] == [str(x) for x in w.images]
    # a second run never overwrites the first
    w2 = write_image_result(r, tmp_path)
    assert not set(w2.images) & set(w.images)


def test_precision_choice():
    assert resolve_precision("auto", "cpu", cpu_fast_bf16=False) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_fast_bf16=True) == "bf16"
    assert resolve_precision("auto", "cuda", gpu_cc=(8, 9)) == "bf16"
    assert resolve_precision("auto", "cuda", gpu_cc=(7, 5)) == "fp16"
    with pytest.raises(BadInput):
        resolve_precision("fp16", "cpu")


def test_bf16_autocast_runs_and_stays_close(model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    ctx, _ = model.encode(["a red circle", "a blue square"])
    a = EagerBackend(model.unet, precision="fp32")(x, t, ctx)
    b = EagerBackend(model.unet, precision="bf16")(x, t, ctx)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
