"""The one DDIM's parameters: time grids, prediction type, hooks, the function and the class."""

from __future__ import annotations

import pytest
import torch

from _tiny_release import TINY_LMDM as TINY
from talkinghead.diffusion import (
    DDIMSampler,
    DiffusionSchedule,
    ddim_coefficients,
    ddim_sample,
    ddim_time_pairs,
)
from talkinghead.models.lmdm import LMDM


def _linear_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Depends on x and t, so that a wrong x or t anywhere in the loop shows.
    return torch.tanh(x.flip(-1)) * (0.2 + t.view(-1, *([1] * (x.ndim - 1))) / 1000)


# ---------------------------------------------------------------------------- time grids


def test_adm_grid_ends_on_the_clean_sample():
    assert ddim_time_pairs(5, spacing="adm") == [
        (800, 600),
        (600, 400),
        (400, 200),
        (200, 0),
        (0, -1),
    ]
    assert ddim_time_pairs(1, spacing="adm") == [(0, -1)]


@pytest.mark.parametrize(("spacing", "offset"), [("leading", 0), ("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("steps", [1, 3, 7, 50, 200])
@pytest.mark.parametrize("alpha_one", [True, False])
def test_diffusers_spacings_match_ddimscheduler(spacing, offset, steps, alpha_one):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_one
    )
    ref.set_timesteps(steps)
    pairs = ddim_time_pairs(steps, spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_one)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    for t, t_prev in pairs:
        prev = t - 1000 // steps  # diffusers' rule; below 0: alpha = 1, or alpha_bar[0]
        assert t_prev == (prev if prev >= 0 else (-1 if alpha_one else 0))


def test_bad_grids_are_rejected():
    with pytest.raises(ValueError, match="spacing must be one of"):
        ddim_time_pairs(10, spacing="karras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps_offset"):
        ddim_time_pairs(10, spacing="ditto", steps_offset=1)
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        ddim_time_pairs(10, spacing="adm", set_alpha_to_one=False)
    with pytest.raises(ValueError, match="bad DDIM step"):
        ddim_time_pairs(1000, spacing="leading", steps_offset=1)  # t = 1000 is off the schedule
    with pytest.raises(ValueError, match="bad DDIM step"):
        ddim_coefficients(DiffusionSchedule.cosine().alphas_cumprod, [(10, 20)])
    with pytest.raises(ValueError, match="prediction must be one of"):
        DDIMSampler(prediction="v")  # type: ignore[arg-type]


def test_explicit_pairs_give_the_same_coefficients_as_a_step_count():
    alphas = DiffusionSchedule.cosine().alphas_cumprod
    by_count = ddim_coefficients(alphas, 10, eta=1.0)
    by_pairs = ddim_coefficients(alphas, ddim_time_pairs(10), eta=1.0)
    for name in ("alpha_next_sqrt", "c", "sigma", "alpha_sqrt", "one_minus_alpha_sqrt"):
        assert torch.equal(getattr(by_count, name), getattr(by_pairs, name)), name


def test_coefficients_are_in_the_schedules_dtype():
    for schedule in (DiffusionSchedule.cosine(), DiffusionSchedule.adm_linear()):
        coef = ddim_coefficients(schedule.alphas_cumprod, 5, eta=0.0)
        assert coef.c.dtype == coef.alpha_sqrt.dtype == schedule.dtype
        assert torch.equal(coef.sigma, torch.zeros_like(coef.sigma))  # eta = 0: deterministic


# ---------------------------------------------------------------------------- prediction type


@pytest.mark.parametrize(
    ("schedule", "spacing"),
    [
        (DiffusionSchedule.cosine(), "ditto"),
        (DiffusionSchedule.adm_linear(), "adm"),
        (DiffusionSchedule.scaled_linear(1000, 0.0015, 0.0195), "trailing"),
    ],
)
@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
def test_an_oracle_recovers_the_data_for_any_grid_and_prediction(schedule, spacing, prediction):
    target = torch.linspace(-1, 1, 24).view(1, 2, 3, 4)
    abar = schedule.alphas_cumprod.float()

    def oracle(x, t):  # the exact x_0 / noise for data = target
        if prediction == "x0":
            return target.expand_as(x)
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    sampler = DDIMSampler(20, 0.0, schedule, prediction=prediction, spacing=spacing)
    out = sampler.sample(oracle, (2, 2, 3, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1), rtol=0, atol=1e-3)


def test_x0_and_epsilon_views_of_one_model_agree():
    """A Ditto motion model sampled through its x_0 output and through its noise output."""
    torch.manual_seed(2)
    lmdm = LMDM(**TINY).eval()
    g = torch.Generator().manual_seed(5)
    cond_frame, cond = torch.randn(2, 6, generator=g), torch.randn(2, 8, 16, generator=g)
    x_T, noise = torch.randn(2, 8, 6, generator=g), torch.randn(9, 2, 8, 6, generator=g)
    via_x0 = DDIMSampler(10)(lmdm, cond_frame, cond, x_T=x_T, step_noise=noise)
    via_eps = DDIMSampler(10, prediction="epsilon")(
        lmdm, cond_frame, cond, x_T=x_T, step_noise=noise
    )
    torch.testing.assert_close(via_eps, via_x0, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- function, class, hooks


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_function_and_class_are_the_same_sampler(eta):
    schedule = DiffusionSchedule.adm_linear()
    sampler = DDIMSampler(6, eta, schedule, prediction="epsilon", spacing="adm", clip_x0=1.0)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 3, 4, 4, generator=g)
    by_class = sampler.sample(_linear_model, x_T.shape, x_T=x_T, generator=g)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 3, 4, 4, generator=g)
    by_function = ddim_sample(
        _linear_model,
        x_T,
        schedule=schedule,
        time_pairs=ddim_time_pairs(6, spacing="adm"),
        prediction="epsilon",
        eta=eta,
        generator=g,
        clip_x0=1.0,
    )
    torch.testing.assert_close(by_class, by_function, rtol=0, atol=0)


def test_eta_zero_draws_no_step_noise():
    g = torch.Generator().manual_seed(3)
    DDIMSampler(8, 0.0, prediction="epsilon").sample(_linear_model, (1, 4), generator=g)
    after = torch.randn(3, generator=g)
    g = torch.Generator().manual_seed(3)
    torch.randn(1, 4, generator=g)  # x_T only
    torch.testing.assert_close(after, torch.randn(3, generator=g), rtol=0, atol=0)


def test_before_step_sees_every_timestep_and_changes_x():
    sampler = DDIMSampler(4, 0.0, prediction="epsilon", spacing="leading")
    seen: list[int] = []

    def pin_first(x, t):  # an inpainting-style hook: pin element 0 of every row
        seen.append(int(t[0]))
        x = x.clone()
        x[:, 0] = 0.5
        return x

    out = sampler.sample(_linear_model, (2, 5), x_T=torch.ones(2, 5), before_step=pin_first)
    plain = sampler.sample(_linear_model, (2, 5), x_T=torch.ones(2, 5))
    assert seen == [750, 500, 250, 0]
    assert not torch.allclose(out, plain)
