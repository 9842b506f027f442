"""NoiseSchedule against diffusers' schedulers: betas, grids, forward process, conversions."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

from dlab.errors import BadInput
from dlab.runtime.schedules import make_schedule

# diffusers' DPM solver trips a numpy-2 deprecation inside its own set_timesteps; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIFFUSERS_KIND = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}


def diffusers_scheduler(cls, kind="scaled_linear", **config):
    return cls(beta_schedule=DIFFUSERS_KIND[kind], **SD_BETAS, **config)


@pytest.mark.parametrize("kind", list(DIFFUSERS_KIND))
@pytest.mark.parametrize("rescale", [False, True])
def test_betas_and_alphas_cumprod_match_diffusers(kind, rescale):
    ours = make_schedule(kind, rescale_zero_terminal_snr=rescale)
    theirs = diffusers_scheduler(DDPMScheduler, kind, rescale_betas_zero_snr=rescale)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    assert ours.betas.shape == (1000,)
    torch.testing.assert_close(ours.alphas, 1 - ours.betas, rtol=0, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod, torch.cumprod(ours.alphas, 0), rtol=0, atol=0)
    if not rescale:
        # diffusers builds betas in float32: agreement to float32 precision is all there is to check.
        torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=2e-5, atol=1e-7)
    else:
        # Algorithm 1 recovers betas from differences of ᾱ ratios, which float32 resolves poorly (diffusers'
        # betas are off by up to 2e-4 relative). Same algorithm in float64: exact; ᾱ: float32 level.
        torch.testing.assert_close(ours.betas, rescale_zero_terminal_snr(make_schedule(kind).betas), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=0, atol=2e-6)


def test_zero_terminal_snr_reaches_zero_and_keeps_the_first_step():
    plain = make_schedule("scaled_linear")
    rescaled = make_schedule("scaled_linear", rescale_zero_terminal_snr=True, prediction_type="v_prediction")
    assert rescaled.alphas_cumprod[-1].item() == 0.0
    assert rescaled.snr(999).item() == 0.0
    assert plain.snr(999).item() > 0.0
    assert rescaled.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)


def test_kinds_differ():
    linear, scaled, cosine = (make_schedule(k).alphas_cumprod for k in ("linear", "scaled_linear", "cosine"))
    assert not torch.allclose(linear, scaled)
    assert not torch.allclose(scaled, cosine)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 25, 50, 999, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_ddpm_and_ddim(spacing, steps, offset):
    schedule = make_schedule()
    if spacing == "leading" and steps == 1000 and offset == 1:
        with pytest.raises(BadInput, match="past the last training step"):
            schedule.timesteps(steps, spacing, offset)
        return
    ours = schedule.timesteps(steps, spacing, offset)
    assert ours.dtype == torch.int64 and ours.shape == (steps,)
    for cls in (DDPMScheduler, DDIMScheduler):
        theirs = diffusers_scheduler(cls, timestep_spacing=spacing, steps_offset=offset)
        theirs.set_timesteps(steps)
        assert ours.tolist() == theirs.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 2, 7, 10, 25, 50, 998])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_dpm_solver(spacing, steps, offset):
    ours = make_schedule().timesteps(steps, spacing, offset, drop_endpoint=True)
    theirs = diffusers_scheduler(DPMSolverMultistepScheduler, timestep_spacing=spacing, steps_offset=offset)
    theirs.set_timesteps(steps)
    expected = theirs.timesteps.tolist()
    if spacing == "trailing" and expected[-1] == -1:  # diffusers' spurious extra node, see below
        expected = expected[:-1]
    assert ours.tolist() == expected


def test_dpm_grid_differs_from_ddim_grid():
    schedule = make_schedule()
    assert schedule.timesteps(10, "linspace").tolist()[:2] == [999, 888]
    assert schedule.timesteps(10, "linspace", drop_endpoint=True).tolist()[:2] == [999, 899]


def test_trailing_has_exactly_n_steps_where_diffusers_adds_a_negative_one():
    # diffusers 0.42 builds trailing grids with np.arange(T, 0, -T/n); for n = 61 float error yields
    # a 62nd node at t = -1. We keep exactly n nodes, identical to diffusers' first n.
    theirs = DDIMScheduler(timestep_spacing="trailing")
    theirs.set_timesteps(61)
    assert len(theirs.timesteps) == 62 and theirs.timesteps[-1].item() == -1
    ours = make_schedule().timesteps(61, "trailing")
    assert ours.tolist() == theirs.timesteps[:61].tolist()
    assert ours.min().item() >= 0


def test_add_noise_and_velocity_match_diffusers():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 421, 999])
    for kind in DIFFUSERS_KIND:
        ours = make_schedule(kind)
        theirs = diffusers_scheduler(DDPMScheduler, kind)
        # Stock diffusers (float32 ᾱ; √(1−ᾱ_0) is only good to ~2e-5 relative there) ...
        torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=1e-4, atol=1e-5)
        # ... and the same formulas on our float64 ᾱ: exact.
        theirs.alphas_cumprod = ours.alphas_cumprod.clone()
        torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours.velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=1e-12, atol=0)
    # Per-sample timesteps really are per sample: each row equals that row noised alone at its own t.
    schedule = make_schedule()
    noisy = schedule.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(noisy[i:i + 1], schedule.add_noise(x0[i:i + 1], noise[i:i + 1], ti))
    assert torch.allclose(noisy[0], x0[0], atol=0.05)


def test_add_noise_int_timestep_and_dtype():
    schedule = make_schedule()
    x0 = torch.ones(2, 3, dtype=torch.float32)
    noise = torch.zeros(2, 3, dtype=torch.float32)
    out = schedule.add_noise(x0, noise, 500)
    assert out.dtype == torch.float32
    expected = schedule.alphas_cumprod[500].sqrt().item()
    torch.testing.assert_close(out, torch.full((2, 3), expected, dtype=torch.float32))
    torch.testing.assert_close(out, schedule.add_noise(x0, noise, torch.tensor([500, 500])))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_conversions_invert_the_forward_process(prediction_type):
    schedule = make_schedule(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 900])
    x_t = schedule.add_noise(x0, eps, t)
    target = eps if prediction_type == "epsilon" else schedule.velocity(x0, eps, t)
    torch.testing.assert_close(schedule.to_x0(target, x_t, t), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.to_epsilon(target, x_t, t), eps, rtol=1e-9, atol=1e-9)
    for i in range(2):  # the int-timestep path agrees with the tensor path
        ti = int(t[i])
        torch.testing.assert_close(schedule.to_x0(target[i:i + 1], x_t[i:i + 1], ti), x0[i:i + 1])


def test_snr():
    schedule = make_schedule("linear", beta_start=1e-4, beta_end=0.02)
    a = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.snr(torch.tensor([0, 500])), (a / (1 - a))[[0, 500]])
    assert schedule.snr(0).item() == pytest.approx(1 / 1e-4 - 1, rel=1e-9)
    assert schedule.snr(0).item() > schedule.snr(500).item() > schedule.snr(999).item()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.timesteps(0), "from 1 to 1000"),
        (lambda s: s.timesteps(-3), "from 1 to 1000"),
        (lambda s: s.timesteps(1001), "from 1 to 1000"),
        (lambda s: s.timesteps(2.5), "from 1 to 1000"),
        (lambda s: s.timesteps(10, "uniform"), "unknown timestep spacing 'uniform'"),
        (lambda s: s.timesteps(10, "leading", -1), "steps_offset"),
        (lambda s: s.timesteps(1000, "linspace", drop_endpoint=True), "repeat timesteps"),
        (lambda s: s.timesteps(1000, "leading", drop_endpoint=True), "repeat timesteps"),
    ],
)
def test_bad_timesteps_raise_bad_input(call, message):
    with pytest.raises(BadInput, match=message):
        call(make_schedule())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "quadratic"}, "unknown noise schedule 'quadratic'"),
        ({"prediction_type": "sample"}, "unknown prediction type 'sample'"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "beta_start"),
    ],
)
def test_bad_schedules_raise_bad_input(kwargs, message):
    with pytest.raises(BadInput, match=message):
        make_schedule(**kwargs)


def test_error_messages_are_one_line():
    with pytest.raises(BadInput) as info:
        make_schedule().timesteps(5000)
    assert "\n" not in str(info.value)
