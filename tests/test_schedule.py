import math

import pytest
import torch

from cdp.diffusion import VPSchedule
from cdp.toy import GaussianMixture

SCHEDULES = {
    "linear": VPSchedule(),
    "cosine": VPSchedule(kind="cosine"),
    "discrete": VPSchedule.discrete_cosine(50),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_variance_preserving_and_beta_is_log_alpha_derivative(name):
    s = SCHEDULES[name]
    t = (torch.arange(41, dtype=torch.float64) + 0.37) / 42  # off the discrete knots i/50
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    assert (s.alpha(t).diff() < 0).all()
    h = 1e-6
    fd = -2 * (s.log_alpha(t + h) - s.log_alpha(t - h)) / (2 * h)
    assert torch.allclose(s.beta(t), fd, rtol=1e-5, atol=1e-6)


def test_linear_schedule_known_values():
    s = VPSchedule()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # log alpha(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2) / 2
    assert torch.allclose(s.log_alpha(t), torch.tensor([0.0, -(0.05 + 19.9 / 8) / 2, -(0.1 + 9.95) / 2], dtype=torch.float64))
    assert torch.allclose(s.beta(t), torch.tensor([0.1, 10.05, 20.0], dtype=torch.float64))
    assert float(s.sigma(torch.tensor(0.0))) == 0.0


def test_discretize_matches_dql_vp_beta_schedule():
    # DQL/EDP's discrete VP schedule (b_min 0.1, b_max 10): alpha_i = exp(-b_min/T - (b_max-b_min)(2i-1)/(2T^2))
    T, bmin, bmax = 5, 0.1, 10.0
    i = torch.arange(1, T + 1, dtype=torch.float64)
    betas_dql = 1 - torch.exp(-bmin / T - 0.5 * (bmax - bmin) * (2 * i - 1) / T**2)
    view = VPSchedule(beta_min=bmin, beta_max=bmax).discretize(T)
    assert torch.allclose(view.betas, betas_dql, atol=1e-12)
    assert torch.allclose(view.t, i.new_tensor([0, 0.2, 0.4, 0.6, 0.8, 1.0]))


@pytest.mark.parametrize("T", [5, 100, 1000])
def test_from_betas_round_trip_and_knots(T):
    view = VPSchedule().discretize(T)
    d = VPSchedule.from_betas(view.betas)
    assert torch.allclose(d.alpha(view.t), view.alphas_cumprod.sqrt(), rtol=1e-10)
    assert torch.allclose(d.discretize(T).betas, view.betas, rtol=1e-8, atol=1e-12)
    # between knots log alpha is linear, so beta is constant on each interval
    mid = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    assert torch.allclose(d.beta(mid) / T, -torch.log(1 - view.betas) , rtol=1e-8)


def test_discrete_cosine_matches_improved_ddpm():
    T, s = 100, 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    d = VPSchedule.discrete_cosine(T)
    for i in (1, 10, 50, 99):
        assert float(d.alpha(torch.tensor(i / T, dtype=torch.float64))) ** 2 == pytest.approx(f(i / T) / f(0), rel=1e-9)
    # the last beta is capped at 0.999
    assert float(d.discretize(T).betas[-1]) == pytest.approx(0.999)


@pytest.mark.parametrize("name", SCHEDULES)
def test_inverse_log_snr(name):
    s = SCHEDULES[name]
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64)
    assert torch.allclose(s.inverse_log_snr(s.log_snr(t)), t, atol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_sampling_ode_field_is_the_same_for_every_parameterisation(name):
    """f a + h n(a) is one vector field whether n predicts eps, x0 or the score; and it is
    minus the forward-time probability-flow drift -beta/2 (a + score)."""
    s = SCHEDULES[name]
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.5]), torch.tensor([0.4, 0.6]))
    a = torch.randn(64, 2, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    fields = []
    for p in ("eps", "x0", "score"):
        f, h = s.sampling_ode_coefficients(t, p)
        fields.append(f[:, None] * a + h[:, None] * gm.denoiser(s, p)(a, t))
    assert torch.allclose(fields[0], fields[1], rtol=1e-8, atol=1e-8)
    assert torch.allclose(fields[0], fields[2], rtol=1e-8, atol=1e-8)
    pf = 0.5 * s.beta(t)[:, None] * (a + gm.score(a, t, s))
    assert torch.allclose(fields[0], pf, rtol=1e-8, atol=1e-8)


def test_sample_t_discrete_and_continuous():
    s = VPSchedule()
    t = s.sample_t(1000, num_steps=5)
    assert set((t * 5).round().int().tolist()) == {1, 2, 3, 4, 5}
    t = s.sample_t(1000, t_min=0.01)
    assert t.min() >= 0.01 and t.max() <= 1


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="kind"):
        VPSchedule(kind="quadratic")
    with pytest.raises(ValueError, match="betas"):
        VPSchedule.from_betas(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="prediction"):
        VPSchedule().sampling_ode_coefficients(torch.tensor(0.5), "v")
