import pytest
import torch

from cdp.diffusion import VPSchedule, ddim_draws, ddpm_sample, predict_x0, sample, time_grid
from cdp.toy import GaussianMixture

MIX = GaussianMixture(torch.tensor([[-0.8, 0.0], [0.8, 0.3]]), torch.tensor([0.2, 0.2]), torch.tensor([0.7, 0.3]))
N = 20000


def draw(method, steps, prediction="eps", schedule=None, seed=0, **kw):
    s = schedule or VPSchedule()
    g = torch.Generator().manual_seed(seed)
    xT = torch.randn(N, 2, dtype=torch.float64, generator=g)
    if method == "ddpm":
        kw["generator"] = g
    return sample(MIX.denoiser(s, prediction), xT, s, method, steps, prediction, **kw)


def error(x):
    """max abs error of the mean, the covariance diagonal and the mode weights vs the mixture."""
    lab = MIX.assign(x)
    w0 = (lab == 0).double().mean()
    return max(
        float((x.mean(0) - MIX.mean()).abs().max()),
        float((x.var(0) - torch.diag(MIX.cov())).abs().max()),
        float((w0 - MIX.weights[0]).abs()),
    )


# (method, few steps, many steps): many steps must match the mixture within sampling noise
CASES = [("ddpm", 10, 200, "logsnr"), ("ddim", 10, 200, "logsnr"), ("ddim", 20, 500, "uniform"),
         ("dpm_solver++", 4, 20, "logsnr")]


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("method,few,many,spacing", CASES)
def test_sampler_matches_mixture_and_error_falls(method, few, many, spacing, prediction):
    x = draw(method, many, prediction, spacing=spacing)
    lab = MIX.assign(x)
    # sampling noise on N = 20000: SE of a weight ~ 0.0032, of the mean ~ 0.006
    assert float((lab == 0).double().mean()) == pytest.approx(0.7, abs=0.015)
    assert torch.allclose(x.mean(0), MIX.mean(), atol=0.03)
    assert torch.allclose(x.var(0), torch.diag(MIX.cov()), rtol=0.06)
    for k in range(2):  # each mode keeps its own mean and spread
        xk = x[lab == k]
        assert torch.allclose(xk.mean(0), MIX.means[k], atol=0.02)
        assert torch.allclose(xk.std(0), MIX.stds[k].expand(2), rtol=0.08)
    assert error(x) < 0.5 * error(draw(method, few, prediction, spacing=spacing))


@pytest.mark.parametrize("method", ["ddim", "dpm_solver++"])
def test_deterministic_samplers_agree_across_parameterisations(method):
    assert torch.allclose(draw(method, 10, "eps"), draw(method, 10, "x0"), atol=1e-8)


def test_ddpm_step_is_the_textbook_posterior():
    """One DDPM step with T discrete steps: mean = (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(1 - beta_i),
    variance = beta_i (1 - abar_{i-1}) / (1 - abar_i) (Ho et al. 2020)."""
    T = 10
    s = VPSchedule()
    view = s.discretize(T)
    eps_fn = MIX.denoiser(s, "eps")
    x = torch.randn(4, 2, dtype=torch.float64)
    # run the first step (i = T -> T-1) twice with the same noise seed, once by hand
    g1 = torch.Generator().manual_seed(3)
    _, traj = ddpm_sample(eps_fn, x, s, T, generator=g1, return_trajectory=True)
    g2 = torch.Generator().manual_seed(3)
    z = torch.randn(x.shape, dtype=x.dtype, generator=g2)
    b, ab, ab_prev = view.betas[T - 1], view.alphas_cumprod[T], view.alphas_cumprod[T - 1]
    eps = eps_fn(x, torch.full((4,), 1.0, dtype=torch.float64))
    mean = (x - b / torch.sqrt(1 - ab) * eps) / torch.sqrt(1 - b)
    var = b * (1 - ab_prev) / (1 - ab)
    assert torch.allclose(traj[1], mean + var.sqrt() * z, atol=1e-10)


@pytest.mark.parametrize("eta,spacing", [(1.0, "uniform"), (0.5, "logsnr"), (0.0, "uniform")])
def test_step_noise_made_beforehand_gives_the_drawn_run(eta, spacing):
    """``ddim_draws`` counts the draws a run makes after its start (none with eta = 0, none on the
    last step to sigma = 0); handing those draws in as ``step_noise`` reproduces the run."""
    s, T = VPSchedule(), 6
    eps_fn = MIX.denoiser(s, "eps")
    x = torch.randn(4, 2, dtype=torch.float64)
    drawn = sample(eps_fn, x, s, "ddim", T, "eps", eta=eta, spacing=spacing, generator=torch.Generator().manual_seed(5))
    k = ddim_draws(s, T, eta=eta, spacing=spacing)
    assert k == (T - 1 if eta > 0 else 0)
    g = torch.Generator().manual_seed(5)
    z = torch.stack([torch.randn(x.shape, dtype=x.dtype, generator=g) for _ in range(k)]) if k else torch.zeros(0, 4, 2)
    assert torch.equal(sample(eps_fn, x, s, "ddim", T, "eps", eta=eta, spacing=spacing, step_noise=z.double()), drawn)
    with pytest.raises(ValueError, match="step_noise must be"):
        sample(eps_fn, x, s, "ddim", T, "eps", eta=eta, spacing=spacing, step_noise=torch.zeros(k + 1, 4, 2))


def test_action_approximation_is_the_one_step_denoised_action():
    """EDP's a0_hat from one network call equals a single DDIM step from t to 0."""
    s = VPSchedule()
    for p in ("eps", "x0"):
        net = MIX.denoiser(s, p)
        a = torch.randn(8, 2, dtype=torch.float64)
        t = torch.full((8,), 1.0, dtype=torch.float64)
        one_step = sample(net, a, s, "ddim", 1, p)
        assert torch.allclose(predict_x0(net, a, t, s, p), one_step, atol=1e-10)
        assert torch.allclose(predict_x0(net, a, t, s, p), MIX.x0(a, t, s), atol=1e-10)


def test_ode_sampler_on_gaussian_is_the_exact_scaling():
    """For N(0, s^2) data the flow map from t = 1 to t_end is a -> a sqrt(v(t_end) / v(1))."""
    s, sd = VPSchedule(), 0.5
    g = GaussianMixture(torch.zeros(1, 3), torch.tensor([sd]), torch.ones(1))
    x = torch.randn(5, 3, dtype=torch.float64)
    out = sample(g.denoiser(s, "eps"), x, s, "ode", 100, "eps", t_end=1e-3)
    v = lambda t: s.alpha(torch.tensor(t, dtype=torch.float64)) ** 2 * sd**2 + s.sigma(torch.tensor(t, dtype=torch.float64)) ** 2  # noqa: E731
    assert torch.allclose(out, x * torch.sqrt(v(1e-3) / v(1.0)), rtol=1e-6)


def test_time_grids():
    s = VPSchedule()
    g = time_grid(10, spacing="logsnr", schedule=s)
    assert g[0] == 1.0 and g[-1] == 0.0 and len(g) == 11
    lam = s.log_snr(torch.tensor(g[:-1], dtype=torch.float64))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(9), rtol=1e-6)
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_bad_sampler_input():
    s = VPSchedule()
    net = MIX.denoiser(s, "eps")
    with pytest.raises(ValueError, match="method"):
        sample(net, torch.randn(3, 2), s, "euler")
    with pytest.raises(ValueError, match="x_T"):
        sample(net, torch.full((3, 2), float("nan")), s)
    with pytest.raises(ValueError, match="steps"):
        sample(net, torch.randn(3, 2), s, "ddim", 0)
