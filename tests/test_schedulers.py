"""Scheduler properties, golden values, and side-by-side equality with MONAI's RFlowScheduler / DDPMScheduler."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers.ddpm import DDPMScheduler
from monai.networks.schedulers.rectified_flow import RFlowScheduler, timestep_transform

from maisi.diffusion import (
    DDPM,
    RectifiedFlow,
    build_scheduler,
    randn,
    scheduler_from_config,
)

# the official rflow-ct scheduler (config_network_rflow.json)
OFFICIAL_RFLOW = dict(
    num_train_timesteps=1000,
    use_discrete_timesteps=False,
    use_timestep_transform=True,
    sample_method="uniform",
    scale=1.4,
)
SHAPES = [(8, 8, 8), (32, 32, 32), (64, 64, 32), (40, 96, 64), (128, 128, 64), (256, 256, 128)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x0_noise(shape=(2, 4, 6, 5, 4), seed=0):
    g = _gen(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# -- shared interface ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler, first, terminal",
    [(RectifiedFlow(), 1000.0, 0.0), (DDPM(), 999, -1)],
    ids=["rflow", "ddpm"],
)
@pytest.mark.parametrize("num_steps", [1, 7, 30])
def test_timesteps_have_num_steps_plus_terminal(scheduler, first, terminal, num_steps):
    ts = scheduler.timesteps(num_steps, spatial_numel=16**3)
    assert ts.shape == (num_steps + 1,)
    assert ts[0].item() == first and ts[-1].item() == terminal
    assert bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize(
    "scheduler", [RectifiedFlow(scale=1.4), DDPM(prediction="v_prediction")], ids=["rflow", "ddpm"]
)
def test_config_round_trip(scheduler):
    assert type(scheduler)(**scheduler.config()) == scheduler
    assert build_scheduler(scheduler.kind, **scheduler.config()) == scheduler
    # a config holding both kinds' fields (as maisi.config.SchedulerConfig does) keeps only this kind's
    mixed = {**RectifiedFlow().config(), **DDPM().config(), **scheduler.config(), "kind": scheduler.kind}
    assert scheduler_from_config(mixed) == scheduler
    assert scheduler != (DDPM() if scheduler.kind == "rflow" else RectifiedFlow())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RectifiedFlow(sample_method="normal"), "sample_method must be one of"),
        (lambda: RectifiedFlow(scale=0.0), "scale must be > 0"),
        (lambda: RectifiedFlow(num_train_timesteps=0), "num_train_timesteps must be a positive integer"),
        (lambda: RectifiedFlow().timesteps(30), "spatial_numel is required"),
        (
            lambda: RectifiedFlow().timesteps(0, spatial_numel=512),
            r"num_steps must be an integer in \[1, 1000\]",
        ),
        (lambda: DDPM(prediction="eps"), "prediction must be one of"),
        (lambda: DDPM(schedule="sigmoid_beta"), "schedule must be one of"),
        (lambda: DDPM(variance_type="learned"), "variance_type must be one of"),
        (lambda: DDPM().timesteps(1001), r"num_steps must be an integer in \[1, 1000\]"),
        (lambda: build_scheduler("ddim"), "scheduler kind must be one of"),
        (lambda: build_scheduler("rflow", beta_start=0.1), "scheduler 'rflow' has no option 'beta_start'"),
        (lambda: scheduler_from_config({"num_train_timesteps": 10}), "scheduler config has no 'kind'"),
    ],
)
def test_invalid_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_randn_per_sample_generators_equal_single_draws():
    batch = randn((3, 2, 4, 4), generator=[_gen(s) for s in (5, 6, 7)])
    for i, seed in enumerate((5, 6, 7)):
        assert torch.equal(batch[i : i + 1], randn((1, 2, 4, 4), generator=_gen(seed)))
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        randn((3, 2), generator=[_gen(0), _gen(1)])


# -- rectified flow --------------------------------------------------------------------------------------------


def test_rflow_training_pair_endpoints_and_velocity_target():
    x0, noise = _x0_noise()
    rf = RectifiedFlow()
    x_t, target = rf.training_pair(x0, noise, torch.tensor([0.0, 1000.0]))
    assert torch.equal(x_t[0], x0[0])  # t = 0 is the data
    assert torch.equal(x_t[1], noise[1])  # t = T is pure noise
    assert torch.equal(target, x0 - noise)  # MAISI's velocity target
    x_t, _ = rf.training_pair(x0, noise, torch.tensor([250.0, 750.0]))
    torch.testing.assert_close(x_t[0], 0.75 * x0[0] + 0.25 * noise[0])
    torch.testing.assert_close(x_t[1], 0.25 * x0[1] + 0.75 * noise[1])


def test_rflow_training_pair_matches_monai_add_noise():
    x0, noise = _x0_noise((4, 4, 6, 5, 4))
    t = torch.rand(4, generator=_gen(3)) * 1000
    x_t, _ = RectifiedFlow(**OFFICIAL_RFLOW).training_pair(x0, noise, t)
    assert torch.equal(x_t, RFlowScheduler(**OFFICIAL_RFLOW).add_noise(x0, noise, t))


@pytest.mark.parametrize("shape", SHAPES)
def test_rflow_transform_matches_monai(shape):
    t = torch.rand(200, generator=_gen(1)) * 1000
    numel = math.prod(shape)
    expected = timestep_transform(t, input_img_size_numel=torch.prod(torch.tensor(shape)))
    assert torch.equal(RectifiedFlow().transform_time(t, numel), expected)


def test_rflow_transform_direction_and_scale():
    rf = RectifiedFlow()
    t = torch.tensor([100.0, 500.0, 900.0])
    torch.testing.assert_close(rf.transform_time(t, 32**3), t)  # identity at the base size
    assert bool((rf.transform_time(t, 64**3) > t).all())  # larger latents: more time at high noise
    assert bool((rf.transform_time(t, 16**3) < t).all())
    # ratio r = 2: 500 -> 1000 * 2 * 0.5 / (1 + 0.5) (transform_scale is ignored by MONAI, applied here)
    torch.testing.assert_close(
        RectifiedFlow(transform_scale=2.0).transform_time(torch.tensor(500.0), 32**3),
        torch.tensor(2000.0 / 3.0),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_steps", [1, 10, 30, 1000])
@pytest.mark.parametrize("discrete", [False, True])
def test_rflow_timesteps_match_monai(shape, num_steps, discrete):
    options = {**OFFICIAL_RFLOW, "use_discrete_timesteps": discrete}
    monai_rf = RFlowScheduler(**options)
    monai_rf.set_timesteps(num_steps, input_img_size_numel=torch.prod(torch.tensor(shape)))
    ts = RectifiedFlow(**options).timesteps(num_steps, spatial_numel=math.prod(shape))
    assert torch.equal(ts[:-1], monai_rf.timesteps.float())
    assert ts[-1].item() == 0.0


def test_rflow_timesteps_golden():
    # 8^3 latent: ratio (512 / 32768)^(1/3) = 1/4, s -> s / (4 - 3 s), then float16 rounding
    assert RectifiedFlow().timesteps(5, spatial_numel=8**3).tolist() == [
        1000.0,
        500.0,
        272.75,
        142.875,
        58.8125,
        0.0,
    ]
    # 64x64x32 latent: ratio 4^(1/3)
    assert RectifiedFlow().timesteps(5, spatial_numel=64 * 64 * 32).tolist() == [
        1000.0,
        864.0,
        704.0,
        514.0,
        284.0,
        0.0,
    ]
    no_shift = RectifiedFlow(use_timestep_transform=False)
    assert no_shift.timesteps(4).tolist() == [1000.0, 750.0, 500.0, 250.0, 0.0]


@pytest.mark.parametrize("sample_method", ["uniform", "logit-normal"])
@pytest.mark.parametrize("discrete", [False, True])
def test_rflow_sample_times_match_monai(sample_method, discrete):
    options = {
        **OFFICIAL_RFLOW,
        "sample_method": sample_method,
        "loc": 0.3,
        "use_discrete_timesteps": discrete,
    }
    x = torch.zeros(64, 4, 16, 24, 8)
    with torch.random.fork_rng():
        torch.manual_seed(11)  # MONAI draws from the global generator
        expected = RFlowScheduler(**options).sample_timesteps(x)
    t = RectifiedFlow(**options).sample_times(64, generator=_gen(11), spatial_numel=16 * 24 * 8)
    assert torch.equal(t, expected)
    assert 0 <= t.min() and t.max() < 1000


def test_rflow_sample_times_depend_only_on_seed():
    rf = RectifiedFlow(sample_method="logit-normal")
    a = rf.sample_times(8, generator=_gen(2), spatial_numel=512)
    assert torch.equal(a, rf.sample_times(8, generator=_gen(2), spatial_numel=512))
    assert not torch.equal(a, rf.sample_times(8, generator=_gen(3), spatial_numel=512))


@pytest.mark.parametrize("t, t_next", [(1000.0, 500.0), (500.5, 480.75), (272.75, 142.875), (58.8125, 0.0)])
def test_rflow_step_matches_monai(t, t_next):
    x, v = _x0_noise()
    monai_rf = RFlowScheduler(**OFFICIAL_RFLOW)
    monai_rf.set_timesteps(30, input_img_size_numel=torch.tensor(512))
    expected, _ = monai_rf.step(
        v, torch.tensor(t, dtype=torch.float16), x, torch.tensor(t_next, dtype=torch.float16)
    )
    out = RectifiedFlow(**OFFICIAL_RFLOW).step(v, torch.tensor(t), torch.tensor(t_next), x)
    assert torch.equal(out, expected)
    # Euler with MONAI's int(t_next): dt = (t - trunc(t_next)) / T
    torch.testing.assert_close(out, x + v * (t - math.trunc(t_next)) / 1000)


# -- DDPM ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["scaled_linear_beta", "linear_beta", "cosine"])
def test_ddpm_tables_match_monai(schedule):
    betas = {} if schedule == "cosine" else {"beta_start": 0.0015, "beta_end": 0.0195}
    monai_ddpm = DDPMScheduler(num_train_timesteps=1000, schedule=schedule, **betas)
    ours = DDPM(schedule=schedule)
    assert torch.equal(ours.betas, monai_ddpm.betas)
    assert torch.equal(ours.alphas_cumprod, monai_ddpm.alphas_cumprod)


def test_ddpm_alphas_cumprod_golden():
    abar = DDPM().alphas_cumprod
    assert abar[0].item() == pytest.approx(1 - 0.0015, abs=1e-7)
    assert abar[499].item() == pytest.approx(0.1158444732, rel=1e-6)
    assert abar[999].item() == pytest.approx(1.4230386e-4, rel=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddpm_training_pair(prediction):
    x0, noise = _x0_noise()
    ddpm = DDPM(prediction=prediction)
    x_t, target = ddpm.training_pair(x0, torch.zeros_like(noise), torch.tensor([0, 0]))
    torch.testing.assert_close(
        x_t, math.sqrt(1 - 0.0015) * x0
    )  # t = 0: x_t = sqrt(abar_0) x0, abar_0 = 1 - beta_0
    t = torch.tensor([0, 999])
    x_t, target = ddpm.training_pair(x0, noise, t)
    monai_ddpm = DDPMScheduler(
        num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195
    )
    assert torch.equal(x_t, monai_ddpm.add_noise(x0, noise, t))
    expected = {"epsilon": noise, "sample": x0, "v_prediction": monai_ddpm.get_velocity(x0, noise, t)}[
        prediction
    ]
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-6)


def test_ddpm_sample_times():
    t = DDPM().sample_times(500, generator=_gen(4))
    assert t.dtype == torch.int64 and 0 <= t.min() and t.max() <= 999
    assert torch.equal(t, torch.randint(0, 1000, (500,), generator=_gen(4)))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_matches_monai(prediction, clip_sample, variance_type, t):
    x, out = _x0_noise()
    options = dict(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=clip_sample)
    monai_ddpm = DDPMScheduler(
        num_train_timesteps=1000, prediction_type=prediction, variance_type=variance_type, **options
    )
    expected, _ = monai_ddpm.step(out, t, x, generator=_gen(9))
    ours = DDPM(prediction=prediction, variance_type=variance_type, **options)
    assert torch.equal(ours.step(out, torch.tensor(t), torch.tensor(t - 1), x, generator=_gen(9)), expected)


def test_ddpm_strided_step_is_the_posterior():
    # from t to s < t - 1 the step samples q(x_s | x_t, x0) (Ho et al. eq. 7 with alpha_{t|s} = abar_t / abar_s)
    x, x0 = _x0_noise()
    ddpm = DDPM(prediction="sample")
    t, s = 700, 450
    abar = ddpm.alphas_cumprod.double()
    a_t, a_s = abar[t], abar[s]
    beta_ts = 1 - a_t / a_s
    mean = (
        a_s.sqrt() * beta_ts / (1 - a_t) * x0.double()
        + (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t) * x.double()
    )
    std = ((1 - a_s) / (1 - a_t) * beta_ts).sqrt()
    expected = mean + std * torch.randn(x.shape, generator=_gen(8)).double()
    out = ddpm.step(x0, torch.tensor(t), torch.tensor(s), x, generator=_gen(8))
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_ddpm_step_needs_generator_only_when_it_adds_noise():
    x, out = _x0_noise()
    ddpm = DDPM()
    with pytest.raises(ValueError, match="generator is required for t > 0"):
        ddpm.step(out, torch.tensor(5), torch.tensor(4), x)
    final = ddpm.step(out, torch.tensor(0), torch.tensor(-1), x)  # last step: the mean, no noise
    torch.testing.assert_close(final, (x - 0.0015**0.5 * out) / (1 - 0.0015) ** 0.5, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="-1 <= t_next < t"):
        ddpm.step(out, torch.tensor(5), torch.tensor(5), x, generator=_gen(0))
