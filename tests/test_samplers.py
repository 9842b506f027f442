"""Samplers step for step against diffusers' schedulers, diffusers' published oracles, and the API around them."""

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

try:  # newer diffusers keep it outside the pipelines, which need transformers
    from diffusers.guiders.guider_utils import rescale_noise_cfg
except ImportError:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        rescale_noise_cfg,
    )

from dlab.errors import BadInput
from dlab.runtime.guidance import cfg_model
from dlab.runtime.samplers import (
    SAMPLERS,
    SamplingCancelled,
    StepInfo,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from dlab.runtime.schedules import make_schedule

# diffusers' DPM solver trips a numpy-2 deprecation inside its own set_timesteps; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIFFUSERS_KIND = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_CLASS = {sample_ddpm: DDPMScheduler, sample_ddim: DDIMScheduler, sample_dpmpp_2m: DPMSolverMultistepScheduler}


def sin_model(calls=None):
    """ε (or v) = sin(x) · t / 1000; t may be diffusers' 0-d tensor or our (B,) LongTensor."""

    def model(x, t):
        if calls is not None:
            calls.append(t.clone())
        t = torch.as_tensor(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return torch.sin(x) * t / 1000

    return model


def start(seed=0, scale=1.0):
    return scale * torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_scheduler(sampler, schedule, spacing, steps_offset, float64=True, **config):
    """The diffusers scheduler our sampler claims to be, configured alike.

    With ``float64`` its ᾱ is replaced by our float64 one, so that the comparison measures the
    algorithm and not diffusers' float32 betas (test_schedules compares the schedules themselves).
    """
    cls = DIFFUSERS_CLASS[sampler]
    scheduler = cls(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=DIFFUSERS_KIND[schedule.kind],
        rescale_betas_zero_snr=bool(schedule.alphas_cumprod[-1] == 0),
        prediction_type=schedule.prediction_type,
        timestep_spacing=spacing,
        steps_offset=steps_offset,
        **config,
    )
    if float64:
        alphas_cumprod = schedule.alphas_cumprod.clone()
        if cls is DPMSolverMultistepScheduler and alphas_cumprod[-1] == 0:
            alphas_cumprod[-1] = 2.0**-24  # what its __init__ does for zero terminal SNR
        scheduler.alphas_cumprod = alphas_cumprod
        if cls is DDIMScheduler:
            scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config.get(
                "set_alpha_to_one", True) else alphas_cumprod[0]
    return scheduler


def diffusers_trajectory(scheduler, x, model, num_steps, **step_kwargs):
    """[(t, x after the step, x̂_0 of the step)] from diffusers' own loop."""
    scheduler.set_timesteps(num_steps)
    steps = []
    for t in scheduler.timesteps:
        out = scheduler.step(model(x, t), t, x, **step_kwargs)
        x = out.prev_sample
        x0 = out.pred_original_sample if hasattr(out, "pred_original_sample") else scheduler.model_outputs[-1]
        steps.append((int(t), x, x0))
    return steps


def our_trajectory(sampler, model, x, schedule, num_steps, **kwargs):
    infos = []
    final = sampler(model, x, schedule, num_steps, callback=infos.append, **kwargs)
    assert torch.equal(final, infos[-1].x)
    return infos


def assert_same_trajectory(ours, theirs, tol):
    assert [info.t for info in ours] == [t for t, _, _ in theirs]
    for info, (t, x, x0) in zip(ours, theirs):
        torch.testing.assert_close(info.x, x, rtol=tol, atol=tol, msg=lambda m, t=t: f"x after t={t}: {m}")
        torch.testing.assert_close(info.x0_pred, x0.to(info.x0_pred.dtype), rtol=tol, atol=tol,
                                   msg=lambda m, t=t: f"x0 at t={t}: {m}")
    assert [info.index for info in ours] == list(range(len(ours)))
    assert all(info.total == len(ours) for info in ours)


# (kind, spacing, prediction type, steps, steps_offset, zero terminal SNR)
CONFIGS = [
    (kind, spacing, prediction, steps, 0, False)
    for kind, spacing, prediction, steps in itertools.product(
        DIFFUSERS_KIND, ["leading", "trailing", "linspace"], ["epsilon", "v_prediction"], [7, 25]
    )
] + [
    ("scaled_linear", "leading", "epsilon", 20, 1, False),  # Stable Diffusion 1.x/2.x configs
    ("scaled_linear", "trailing", "v_prediction", 10, 0, True),  # Lin et al. 2023: starts at SNR 0
    ("linear", "linspace", "v_prediction", 3, 0, True),
    ("cosine", "linspace", "epsilon", 1, 0, False),
    ("linear", "leading", "v_prediction", 2, 0, False),
]
CONFIG_IDS = ["-".join(str(v) for v in c) for c in CONFIGS]


@pytest.mark.parametrize("kind, spacing, prediction, steps, offset, zero_snr", CONFIGS, ids=CONFIG_IDS)
def test_ddpm_matches_diffusers_step_for_step(kind, spacing, prediction, steps, offset, zero_snr):
    schedule = make_schedule(kind, rescale_zero_terminal_snr=zero_snr, prediction_type=prediction)
    x = start()
    # diffusers draws its variance noise as randn(shape, generator, dtype=model_output.dtype) on the
    # CPU, only while t > 0: the same draws as ours from the same seed.
    theirs = diffusers_trajectory(reference_scheduler(sample_ddpm, schedule, spacing, offset, clip_sample=False),
                                  x, sin_model(), steps, generator=torch.Generator().manual_seed(7))
    ours = our_trajectory(sample_ddpm, sin_model(), x, schedule, steps, spacing=spacing, steps_offset=offset,
                          generator=torch.Generator().manual_seed(7))
    assert_same_trajectory(ours, theirs, tol=1e-10)


@pytest.mark.parametrize("kind, spacing, prediction, steps, offset, zero_snr", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_matches_diffusers_step_for_step(kind, spacing, prediction, steps, offset, zero_snr, set_alpha_to_one):
    schedule = make_schedule(kind, rescale_zero_terminal_snr=zero_snr, prediction_type=prediction)
    x = start()
    reference = reference_scheduler(sample_ddim, schedule, spacing, offset, clip_sample=False,
                                    set_alpha_to_one=set_alpha_to_one)
    theirs = diffusers_trajectory(reference, x, sin_model(), steps)
    ours = our_trajectory(sample_ddim, sin_model(), x, schedule, steps, spacing=spacing, steps_offset=offset,
                          set_alpha_to_one=set_alpha_to_one)
    assert_same_trajectory(ours, theirs, tol=1e-10)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_with_eta_matches_diffusers(eta, spacing):
    schedule = make_schedule("scaled_linear", prediction_type="v_prediction")
    x = start()
    reference = reference_scheduler(sample_ddim, schedule, spacing, 0, clip_sample=False, set_alpha_to_one=False)
    theirs = diffusers_trajectory(reference, x, sin_model(), 12, eta=eta, generator=torch.Generator().manual_seed(3))
    ours = our_trajectory(sample_ddim, sin_model(), x, schedule, 12, spacing=spacing, eta=eta,
                          set_alpha_to_one=False, generator=torch.Generator().manual_seed(3))
    assert_same_trajectory(ours, theirs, tol=1e-10)
    deterministic = sample_ddim(sin_model(), x, schedule, 12, spacing=spacing, set_alpha_to_one=False)
    assert not torch.allclose(ours[-1].x, deterministic, atol=1e-3)


@pytest.mark.parametrize("kind, spacing, prediction, steps, offset, zero_snr", CONFIGS, ids=CONFIG_IDS)
def test_dpmpp_2m_matches_diffusers_step_for_step(kind, spacing, prediction, steps, offset, zero_snr):
    schedule = make_schedule(kind, rescale_zero_terminal_snr=zero_snr, prediction_type=prediction)
    x = start()
    reference = reference_scheduler(sample_dpmpp_2m, schedule, spacing, offset,
                                    algorithm_type="dpmsolver++", solver_order=2)
    theirs = diffusers_trajectory(reference, x, sin_model(), steps)
    ours = our_trajectory(sample_dpmpp_2m, sin_model(), x, schedule, steps, spacing=spacing, steps_offset=offset)
    # diffusers' solver keeps σ in float32 and casts the sample to float32 inside each step.
    assert_same_trajectory(ours, theirs, tol=1e-5)


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_clip_sample_matches_diffusers(sampler):
    schedule = make_schedule("linear")
    x = start(scale=3.0)
    kwargs = {"generator": torch.Generator().manual_seed(5)} if sampler is sample_ddpm else {}
    reference = reference_scheduler(sampler, schedule, "leading", 0, clip_sample=True, clip_sample_range=0.5)
    theirs = diffusers_trajectory(reference, x, sin_model(), 10, **kwargs)
    kwargs = {"generator": torch.Generator().manual_seed(5)} if sampler is sample_ddpm else {}
    ours = our_trajectory(sampler, sin_model(), x, schedule, 10, clip_sample=True, clip_sample_range=0.5, **kwargs)
    assert_same_trajectory(ours, theirs, tol=1e-10)
    assert max(info.x0_pred.abs().max().item() for info in ours) == pytest.approx(0.5)
    kwargs = {"generator": torch.Generator().manual_seed(5)} if sampler is sample_ddpm else {}
    unclipped = sampler(sin_model(), x, schedule, 10, **kwargs)
    assert not torch.allclose(unclipped, ours[-1].x, atol=1e-3)


def seeded(sampler, seed):
    """The generator argument for the stochastic sampler, nothing for the others."""
    return {"generator": torch.Generator().manual_seed(seed)} if sampler is sample_ddpm else {}


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim, sample_dpmpp_2m])
def test_stock_diffusers_stable_diffusion_config(sampler):
    """End to end with diffusers' own float32 schedule, configured as Stable Diffusion's scheduler_config."""
    schedule = make_schedule("scaled_linear")
    x = start()
    sd_options = {sample_ddpm: {"clip_sample": False}, sample_ddim: {"clip_sample": False, "set_alpha_to_one": False},
                  sample_dpmpp_2m: {}}[sampler]
    reference = reference_scheduler(sampler, schedule, "leading", 1, float64=False, **sd_options)
    theirs = diffusers_trajectory(reference, x, sin_model(), 20, **seeded(sampler, 2))
    ours = sampler(sin_model(), x, schedule, 20, steps_offset=1, **seeded(sampler, 2),
                   **({"set_alpha_to_one": False} if sampler is sample_ddim else {}))
    torch.testing.assert_close(ours, theirs[-1][1], rtol=1e-4, atol=1e-4)


def test_model_sees_batched_long_timesteps():
    calls = []
    x = start()
    sample_dpmpp_2m(sin_model(calls), x, make_schedule(), 5, spacing="linspace")
    assert [c.tolist() for c in calls] == [[t, t] for t in make_schedule().timesteps(5, "linspace", drop_endpoint=True).tolist()]
    assert all(c.dtype == torch.long and c.shape == (2,) for c in calls)


# diffusers' published oracles (tests/schedulers/test_scheduler_ddim.py, test_scheduler_ddpm.py):
# dummy model ε = x t / (t + 1) on a deterministic float32 sample, linear betas 1e-4 … 0.02.


def oracle_model(x, t):
    t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return x * t / (t + 1)


def oracle_sample():
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


@pytest.mark.parametrize(
    "prediction, beta_start, set_alpha_to_one, expected_sum, expected_mean",
    [
        ("epsilon", 1e-4, True, 172.0067, 0.223967),
        ("v_prediction", 1e-4, True, 52.5302, 0.0684),
        ("epsilon", 0.01, True, 149.8295, 0.1951),
        ("epsilon", 0.01, False, 149.0784, 0.1941),
    ],
)
def test_ddim_oracle(prediction, beta_start, set_alpha_to_one, expected_sum, expected_mean):
    schedule = make_schedule("linear", beta_start=beta_start, beta_end=0.02, prediction_type=prediction)
    x = sample_ddim(oracle_model, oracle_sample(), schedule, 10, eta=0.0, clip_sample=True,
                    set_alpha_to_one=set_alpha_to_one)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert abs(x.abs().sum().item() - expected_sum) < 1e-2
    assert abs(x.abs().mean().item() - expected_mean) < 1e-3


def test_ddpm_oracle_all_1000_steps():
    schedule = make_schedule("linear", beta_start=1e-4, beta_end=0.02)
    x = sample_ddpm(oracle_model, oracle_sample(), schedule, 1000, clip_sample=True, generator=torch.manual_seed(0))
    assert abs(x.abs().sum().item() - 258.9606) < 1e-2
    assert abs(x.abs().mean().item() - 0.3372) < 1e-3


# Cancellation.


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_cancels_after_the_requested_step(name):
    schedule = make_schedule()
    x = start()
    kwargs = {"generator": torch.Generator().manual_seed(1)} if name == "ddpm" else {}
    full = our_trajectory(SAMPLERS[name], sin_model(), x, schedule, 8, **kwargs)

    calls = []
    seen = []

    def stop_at_third(info: StepInfo):
        seen.append(info.index)
        return info.index == 2

    kwargs = {"generator": torch.Generator().manual_seed(1)} if name == "ddpm" else {}
    with pytest.raises(SamplingCancelled) as cancelled:
        sample(name, sin_model(calls), x, schedule, 8, callback=stop_at_third, **kwargs)
    assert cancelled.value.step == 2
    assert seen == [0, 1, 2]
    assert len(calls) == 3
    assert torch.equal(cancelled.value.x, full[2].x)
    assert not torch.equal(cancelled.value.x, full[-1].x)
    assert "\n" not in str(cancelled.value)


@pytest.mark.parametrize("returned", [None, False, 1, "refreshed"])
def test_only_true_cancels(returned):
    # A progress bar's update() may return a truthy value; only True itself means "stop".
    infos = []
    sample_ddim(sin_model(), start(), make_schedule(), 5, callback=lambda info: infos.append(info) or returned)
    assert [info.index for info in infos] == [0, 1, 2, 3, 4]


# Determinism.


def test_ddim_eta_zero_is_deterministic():
    schedule = make_schedule(prediction_type="v_prediction")
    a = sample_ddim(sin_model(), start(), schedule, 10)
    b = sample_ddim(sin_model(), start(), schedule, 10)
    assert torch.equal(a, b)


def test_ddpm_seed_decides_the_result():
    schedule = make_schedule()
    a = sample_ddpm(sin_model(), start(), schedule, 10, generator=torch.Generator().manual_seed(42))
    b = sample_ddpm(sin_model(), start(), schedule, 10, generator=torch.Generator().manual_seed(42))
    c = sample_ddpm(sin_model(), start(), schedule, 10, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_ddim_eta_seed_decides_the_result():
    schedule = make_schedule()
    a = sample_ddim(sin_model(), start(), schedule, 10, eta=0.5, generator=torch.Generator().manual_seed(42))
    b = sample_ddim(sin_model(), start(), schedule, 10, eta=0.5, generator=torch.Generator().manual_seed(42))
    c = sample_ddim(sin_model(), start(), schedule, 10, eta=0.5, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_input_stays_float32_and_close_to_float64(name):
    schedule = make_schedule()
    # float32 noise draws differ from float64 ones, so DDPM runs its one-step grid, t = 0, where it draws none.
    steps = 1 if name == "ddpm" else 10
    x64 = sample(name, sin_model(), start(), schedule, steps, **seeded(SAMPLERS[name], 9))
    x32 = sample(name, sin_model(), start().float(), schedule, steps, **seeded(SAMPLERS[name], 9))
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-4)


def test_dispatcher_runs_the_named_sampler():
    schedule = make_schedule()
    torch.testing.assert_close(sample("ddim", sin_model(), start(), schedule, 6),
                               sample_ddim(sin_model(), start(), schedule, 6), rtol=0, atol=0)
    torch.testing.assert_close(sample("dpmpp_2m", sin_model(), start(), schedule, 6),
                               sample_dpmpp_2m(sin_model(), start(), schedule, 6), rtol=0, atol=0)
    assert not torch.allclose(sample("ddim", sin_model(), start(), schedule, 6),
                              sample("dpmpp_2m", sin_model(), start(), schedule, 6))


# Classifier-free guidance.


class CountingBackend:
    """backend(x, t, context): x scaled by the context's per-sample sum (and the mask's, if a tuple)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append((x.shape[0], t.clone(), context))
        emb, mask = context if isinstance(context, tuple) else (context, None)
        weight = emb.sum(dim=-1) if mask is None else (emb.sum(dim=-1) + mask.sum(dim=-1))
        return x * weight.reshape(-1, *([1] * (x.ndim - 1))) + torch.cos(x)


def contexts():
    g = torch.Generator().manual_seed(4)
    cond = torch.randn(2, 5, generator=g, dtype=torch.float64)
    uncond = torch.randn(2, 5, generator=g, dtype=torch.float64)
    return cond, uncond


def test_cfg_runs_both_branches_in_one_batched_call():
    cond, uncond = contexts()
    backend = CountingBackend()
    x, t = start(), torch.tensor([500, 500])
    out = cfg_model(backend, cond, uncond, scale=7.5)(x, t)
    assert len(backend.calls) == 1
    batch, t_seen, context = backend.calls[0]
    assert batch == 4 and t_seen.tolist() == [500] * 4
    torch.testing.assert_close(context, torch.cat([uncond, cond]), rtol=0, atol=0)
    out_uncond, out_cond = CountingBackend()(x, t, uncond), CountingBackend()(x, t, cond)
    torch.testing.assert_close(out, out_uncond + 7.5 * (out_cond - out_uncond))
    assert not torch.allclose(out, out_cond)


def test_cfg_with_tuple_contexts():
    cond, uncond = contexts()
    cond_mask, uncond_mask = torch.ones(2, 5, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)
    backend = CountingBackend()
    x, t = start(), torch.tensor([10, 10])
    out = cfg_model(backend, (cond, cond_mask), (uncond, uncond_mask), scale=3.0)(x, t)
    assert len(backend.calls) == 1
    emb, mask = backend.calls[0][2]
    torch.testing.assert_close(emb, torch.cat([uncond, cond]))
    torch.testing.assert_close(mask, torch.cat([uncond_mask, cond_mask]))
    out_uncond = CountingBackend()(x, t, (uncond, uncond_mask))
    out_cond = CountingBackend()(x, t, (cond, cond_mask))
    torch.testing.assert_close(out, out_uncond + 3.0 * (out_cond - out_uncond))


def test_cfg_single_unconditional_context_is_repeated():
    cond, uncond = contexts()
    backend = CountingBackend()
    cfg_model(backend, cond, uncond[:1], scale=2.0)(start(), torch.tensor([5, 5]))
    torch.testing.assert_close(backend.calls[0][2], torch.cat([uncond[:1], uncond[:1], cond]))


def test_cfg_scale_one_is_a_single_conditional_call():
    cond, uncond = contexts()
    backend = CountingBackend()
    x, t = start(), torch.tensor([500, 500])
    out = cfg_model(backend, cond, uncond, scale=1.0)(x, t)
    assert len(backend.calls) == 1
    batch, _, context = backend.calls[0]
    assert batch == 2 and context is cond
    torch.testing.assert_close(out, CountingBackend()(x, t, cond), rtol=0, atol=0)


@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_cfg_rescale_matches_diffusers(rescale):
    cond, uncond = contexts()
    x, t = start(), torch.tensor([500, 500])
    out = cfg_model(CountingBackend(), cond, uncond, scale=5.0, rescale=rescale)(x, t)
    out_uncond, out_cond = CountingBackend()(x, t, uncond), CountingBackend()(x, t, cond)
    guided = out_uncond + 5.0 * (out_cond - out_uncond)
    torch.testing.assert_close(out, rescale_noise_cfg(guided, out_cond, guidance_rescale=rescale))
    if rescale:
        assert not torch.allclose(out, guided)


def test_cfg_inside_a_sampler_calls_the_backend_once_per_step():
    cond, uncond = contexts()
    backend = CountingBackend()
    schedule = make_schedule()
    guided = sample_ddim(cfg_model(backend, cond, uncond, scale=4.0), start(), schedule, 6)
    assert [c[0] for c in backend.calls] == [4] * 6
    plain = sample_ddim(lambda x, t: CountingBackend()(x, t, cond), start(), schedule, 6)
    assert not torch.allclose(guided, plain)


def test_cfg_interval_guides_inside_and_is_conditional_outside():
    cond, uncond = contexts()
    x = start()
    backend = CountingBackend()
    model = cfg_model(backend, cond, uncond, scale=4.0, interval=(100, 700))
    out_uncond = lambda t: CountingBackend()(x, t, uncond)  # noqa: E731
    out_cond = lambda t: CountingBackend()(x, t, cond)  # noqa: E731
    for step in (100, 500, 699):  # inside [100, 700): both branches, one batched call
        t = torch.tensor([step, step])
        torch.testing.assert_close(model(x, t), out_uncond(t) + 4.0 * (out_cond(t) - out_uncond(t)))
    assert [c[0] for c in backend.calls] == [4, 4, 4]
    backend.calls.clear()
    for step in (99, 700, 999):  # outside: the conditional branch alone, on the batch once
        t = torch.tensor([step, step])
        torch.testing.assert_close(model(x, t), out_cond(t), rtol=0, atol=0)
    assert [c[0] for c in backend.calls] == [2, 2, 2]


def test_cfg_interval_per_sample_timesteps():
    cond, uncond = contexts()
    x, t = start(), torch.tensor([50, 300])  # one sample outside, one inside
    out = cfg_model(CountingBackend(), cond, uncond, scale=3.0, interval=(100, 1000))(x, t)
    guided = cfg_model(CountingBackend(), cond, uncond, scale=3.0)(x, t)
    plain = CountingBackend()(x, t, cond)
    torch.testing.assert_close(out[0], plain[0])
    torch.testing.assert_close(out[1], guided[1])


def test_cfg_interval_in_a_sampler_skips_the_unconditional_branch_on_noisy_steps():
    cond, uncond = contexts()
    backend = CountingBackend()
    schedule = make_schedule()
    # 10 DDIM steps, leading spacing: t = 900, 800, …, 0; guidance only below 500.
    out = sample_ddim(cfg_model(backend, cond, uncond, scale=4.0, interval=(0, 500)), start(), schedule, 10)
    assert [c[0] for c in backend.calls] == [2] * 5 + [4] * 5
    assert [int(c[1][0]) for c in backend.calls] == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    full = sample_ddim(cfg_model(CountingBackend(), cond, uncond, scale=4.0), start(), schedule, 10)
    whole = sample_ddim(cfg_model(CountingBackend(), cond, uncond, scale=4.0, interval=(0, 1000)), start(), schedule, 10)
    torch.testing.assert_close(whole, full, rtol=0, atol=0)
    assert not torch.allclose(out, full)


@pytest.mark.parametrize("interval", [(500, 500), (700, 100), (-1, 10)])
def test_cfg_interval_must_be_a_range(interval):
    cond, uncond = contexts()
    with pytest.raises(BadInput, match="guidance interval"):
        cfg_model(CountingBackend(), cond, uncond, scale=3.0, interval=interval)


# Bad input.


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x, s: sample("euler", m, x, s, 10), "unknown sampler 'euler'"),
        (lambda m, x, s: sample_ddim(m, x, s, 0), "from 1 to 1000"),
        (lambda m, x, s: sample_ddpm(m, x, s, 1001), "from 1 to 1000"),
        (lambda m, x, s: sample_dpmpp_2m(m, x, s, -2), "from 1 to 1000"),
        (lambda m, x, s: sample_ddim(m, x, s, 10, spacing="karras"), "unknown timestep spacing"),
        (lambda m, x, s: sample_ddim(m, x, s, 10, eta=-0.1), "eta"),
        (lambda m, x, s: sample_ddim(m, x, s, 10, eta=1.5), "eta"),
        (lambda m, x, s: sample_ddpm(m, x, s, 10, clip_sample=True, clip_sample_range=0.0), "clip_sample_range"),
        (lambda m, x, s: sample_dpmpp_2m(m, x, s, 1000), "repeat timesteps"),
        (lambda m, x, s: cfg_model(CountingBackend(), *contexts(), scale=5.0, rescale=1.5), "rescale"),
        (lambda m, x, s: cfg_model(CountingBackend(), contexts()[0], (contexts()[1],), 5.0), "same structure"),
    ],
)
def test_bad_input_raises(call, message):
    calls = []
    with pytest.raises(BadInput, match=message) as info:
        call(sin_model(calls), start(), make_schedule())
    assert calls == []  # refused before any model call
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_epsilon_model_refused_at_zero_snr(name):
    zero_snr_eps = make_schedule(rescale_zero_terminal_snr=True, prediction_type="epsilon")
    with pytest.raises(BadInput, match="zero-terminal-SNR"):
        sample(name, sin_model(), start(), zero_snr_eps, 10, spacing="trailing")
    # "leading" never reaches t = T - 1, so the same schedule is usable there.
    kwargs = {"generator": torch.Generator().manual_seed(0)} if name == "ddpm" else {}
    assert torch.isfinite(sample(name, sin_model(), start(), zero_snr_eps, 10, **kwargs)).all()
