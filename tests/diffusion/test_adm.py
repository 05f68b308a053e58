"""DiT-Head's diffusion: ADM linear schedule, epsilon objective, DDIM on ADM's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.diffusion import (
    DDIMSampler,
    DiffusionSchedule,
    adm_timesteps,
    linear_beta_schedule,
)


def adm_sampler(steps: int, eta: float = 0.0) -> DDIMSampler:
    """DiT-Head's sampler (as `pipelines.dithead.DiTHeadGenerator` builds it)."""
    return DDIMSampler(
        steps, eta, DiffusionSchedule.adm_linear(), prediction="epsilon", spacing="adm"
    )


def test_linear_schedule_is_adms():
    betas = linear_beta_schedule(1000).numpy()
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)
    # fewer steps: rescaled by 1000 / T, as ADM does
    assert float(linear_beta_schedule(100)[-1]) == pytest.approx(0.2)
    sched = DiffusionSchedule.adm_linear()
    assert sched.n_timestep == 1000 and sched.alphas_cumprod[-1] < 1e-4
    assert sched.dtype == torch.float64
    np.testing.assert_array_equal(sched.alphas_cumprod.numpy(), np.cumprod(1.0 - betas))


def test_ddim_grid_is_adms_respacing():
    assert adm_timesteps(250) == list(range(0, 1000, 4))
    assert adm_timesteps(50) == list(range(0, 1000, 20))
    seven = adm_timesteps(7)
    assert len(seven) == 7 and seven == sorted(set(seven)) and seven[0] == 0
    assert adm_timesteps(1) == [0]
    with pytest.raises(ValueError):
        adm_timesteps(0)
    assert adm_sampler(250).timesteps == list(range(996, -1, -4))


def test_q_sample_and_x0_prediction_invert():
    sched = DiffusionSchedule.adm_linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    eps = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 400, 999])
    xt = sched.q_sample(x0, t, eps)
    assert torch.allclose(sched.predict_x0(xt, t, eps), x0, atol=1e-3)
    assert torch.allclose(xt[0], x0[0], atol=0.05)  # t = 0 barely noised


def test_training_loss_of_a_zero_model_is_the_noise_power():
    sched = DiffusionSchedule.adm_linear()
    x0 = torch.zeros(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    loss = sched.training_loss(lambda x, t: torch.zeros_like(x), x0, generator=g)
    assert float(loss) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("steps", [1, 10, 250])
def test_ddim_with_an_oracle_recovers_the_data(steps):
    sched = DiffusionSchedule.adm_linear()
    target = torch.linspace(-1, 1, 32).view(1, 2, 4, 4)
    abar = sched.alphas_cumprod.float()

    def oracle(x, t):  # the exact noise for data = target
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    out = adm_sampler(steps).sample(
        oracle, (1, 2, 4, 4), generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(out, target, atol=1e-3)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_deterministic_under_a_seed(eta):
    sampler = adm_sampler(5, eta=eta)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return 0.1 * x

    def run(seed):
        return sampler.sample(model, (2, 3, 4, 4), generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls[:5] == [800, 600, 400, 200, 0]
    x_T = torch.ones(2, 3, 4, 4)
    seen = []
    sampler.sample(model, (2, 3, 4, 4), x_T=x_T, callback=lambda i, t, x, x0: seen.append((i, t)))
    assert seen == [(0, 800), (1, 600), (2, 400), (3, 200), (4, 0)]
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(model, (1, 3, 4, 4), x_T=x_T)
