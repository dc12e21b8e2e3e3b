import pytest
import torch
from torch import nn

from cdp.contraction import ContractionConfig, ContractionRegularizer, contraction_loss, separation_and_bound
from cdp.diffusion import VPSchedule, denoising_loss
from cdp.toy import GaussianMixture, two_mode_2d

SCHEDULES = [VPSchedule(), VPSchedule(kind="cosine"), VPSchedule.discrete_cosine(50)]
T = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)


def gaussian(s, d=3):
    return GaussianMixture(torch.zeros(1, d), torch.tensor([s]), torch.ones(1))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine", "discrete"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_gaussian_sign_narrow_contracts_wide_expands(schedule, prediction):
    a = torch.randn(len(T), 3, dtype=torch.float64)
    for s, sign in [(0.5, -1), (2.0, +1)]:
        L = contraction_loss(gaussian(s).denoiser(schedule, prediction), a, T, schedule, prediction, margin=None)
        assert (torch.sign(L) == sign).all(), (s, L)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_gaussian_values_in_closed_form(prediction):
    """N(0, s^2): eps = sigma a / v, x0 = alpha s^2 a / v with v = alpha^2 s^2 + sigma^2, so the
    normalised condition is sigma (1 - 1/v) (eps) and alpha (s^2 - v) / v (x0)."""
    sch, s = VPSchedule(), 0.6
    al, sg = sch.alpha(T), sch.sigma(T)
    v = al**2 * s**2 + sg**2
    want = sg * (1 - 1 / v) if prediction == "eps" else al * (s**2 - v) / v
    a = torch.randn(len(T), 3, dtype=torch.float64)
    got = contraction_loss(gaussian(s).denoiser(sch, prediction), a, T, sch, prediction, margin=None)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-10)
    # the hinge
    hinged = contraction_loss(gaussian(s).denoiser(sch, prediction), a, T, sch, prediction, margin=0.05)
    assert torch.allclose(hinged, want.clamp_min(-0.05), rtol=1e-6, atol=1e-10)


def test_literal_formula_has_the_wrong_sign_for_eps_and_is_right_for_x0():
    sch = VPSchedule()
    a = torch.randn(len(T), 3, dtype=torch.float64)
    net_eps, net_x0 = gaussian(0.5).denoiser(sch, "eps"), gaussian(0.5).denoiser(sch, "x0")
    lit_eps = contraction_loss(net_eps, a, T, sch, "eps", margin=None, form="literal")
    assert (lit_eps > 0).all()  # narrow data, contracting flow, and yet positive
    eig_eps = contraction_loss(net_eps, a, T, sch, "eps", margin=None, form="eig")
    assert torch.allclose(lit_eps, -eig_eps)  # for a multiple of I: lambda_max(S) - sigma = -(sigma - lambda)
    lit_x0 = contraction_loss(net_x0, a, T, sch, "x0", margin=None, form="literal")
    assert torch.allclose(lit_x0, contraction_loss(net_x0, a, T, sch, "x0", margin=None, form="eig"))


def test_frobenius_forms_in_closed_form_and_hutchinson():
    sch, s, beta = VPSchedule(), 0.5, 0.1
    al, sg = sch.alpha(T), sch.sigma(T)
    v = al**2 * s**2 + sg**2
    for d, kwargs in [(3, {}), (12, {"probes": 4000})]:
        net = gaussian(s, d).denoiser(sch, "x0")
        a = torch.randn(len(T), d, dtype=torch.float64)
        lam = al * (s**2 - v) / v  # sym J_F/|h| = lam I
        fro = contraction_loss(net, a, T, sch, "x0", margin=beta, form="frobenius", generator=torch.Generator().manual_seed(0), **kwargs)
        lit = contraction_loss(net, a, T, sch, "x0", margin=beta, form="literal_frobenius", generator=torch.Generator().manual_seed(0), **kwargs)
        rtol = 1e-8 if d == 3 else 1e-8  # Rademacher probes are exact for a multiple of I
        assert torch.allclose(fro, d * (lam + beta) ** 2, rtol=rtol)
        assert torch.allclose(lit, d * (al * s**2 / v + beta) ** 2, rtol=rtol)


def test_hutchinson_estimate_is_unbiased_on_a_non_diagonal_jacobian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 12)).double()
    sch = VPSchedule()
    a = torch.randn(4, 12, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    fn = lambda x, tt: net(x)  # noqa: E731
    exact = contraction_loss(fn, a, t, sch, "x0", form="frobenius", exact_max_dim=12)
    est = contraction_loss(fn, a, t, sch, "x0", form="frobenius", probes=20000, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(est, exact, rtol=0.03)


def test_time_window_zeroes_and_skips_samples():
    sch = VPSchedule()
    calls = []

    def net(a, t):
        calls.append(a.shape[0])
        return gaussian(2.0).eps(a, t, sch)

    a = torch.randn(len(T), 3, dtype=torch.float64)
    L = contraction_loss(net, a, T, sch, "eps", t_max=0.2)
    full = contraction_loss(gaussian(2.0).denoiser(sch, "eps"), a, T, sch, "eps")
    assert torch.allclose(L[:2], full[:2]) and (L[2:] == 0).all()
    assert max(calls) == 2  # only the two samples inside the window reach the network


def test_divergence_bound_exact_for_gaussian_and_holds_for_a_mixture():
    sch = VPSchedule()
    for s in (0.5, 2.0):
        x = torch.randn(4, 3, dtype=torch.float64)
        ratio, bound = separation_and_bound(gaussian(s).denoiser(sch, "eps"), x, 1e-4 * torch.randn(4, 3, dtype=torch.float64), sch, steps=200)
        assert torch.allclose(ratio, bound, rtol=1e-3)
        v = lambda t: sch.alpha(torch.tensor(t)) ** 2 * s**2 + sch.sigma(torch.tensor(t)) ** 2  # noqa: E731
        assert torch.allclose(ratio, torch.sqrt(v(1e-3) / v(1.0)).double().expand(4), rtol=1e-4)
    mix = two_mode_2d(std=0.2)
    x = torch.randn(16, 2, dtype=torch.float64)
    ratio, bound = separation_and_bound(mix.denoiser(sch, "eps"), x, 1e-6 * torch.randn(16, 2, dtype=torch.float64), sch, steps=300)
    assert (ratio <= bound * (1 + 1e-3)).all()
    assert (ratio < 0.99 * bound).any()  # not trivially tight: the field is not a multiple of I


@pytest.mark.parametrize("form", ["eig", "frobenius", "literal"])
def test_loss_gradient_matches_finite_differences(form):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 24), nn.Tanh(), nn.Linear(24, 3)).double()
    fn = lambda a, t: net(torch.cat([a, t[:, None]], -1))  # noqa: E731
    sch = VPSchedule()
    a = torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64) * 0.8 + 0.1
    L = contraction_loss(fn, a, t, sch, "eps", margin=None, form=form).sum()
    w = net[0].weight
    (g,) = torch.autograd.grad(L, w)
    h = 1e-6
    for i, j in [(0, 0), (5, 3), (23, 1)]:
        with torch.no_grad():
            w[i, j] += h
            up = contraction_loss(fn, a, t, sch, "eps", margin=None, form=form).sum()
            w[i, j] -= 2 * h
            dn = contraction_loss(fn, a, t, sch, "eps", margin=None, form=form).sum()
            w[i, j] += h
        assert float(g[i, j]) == pytest.approx(float((up - dn) / (2 * h)), rel=1e-4, abs=1e-8)


def test_regularizer_on_a_users_network():
    torch.manual_seed(0)

    class UserNet(nn.Module):  # not one of ours: (obs, noisy action, t) -> eps
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5 + 2 + 1, 64), nn.SiLU(), nn.Linear(64, 2))

        def forward(self, obs, act, t):
            return self.body(torch.cat([obs, act, t[:, None]], -1))

    net, sch = UserNet(), VPSchedule()
    obs, act = torch.randn(64, 5), torch.randn(64, 2)
    eps_fn = lambda a, t, o: net(o, a, t)  # noqa: E731
    reg = ContractionRegularizer(sch, "eps", gamma=0.1)
    out = denoising_loss(eps_fn, act, sch, cond=obs)
    term = reg(eps_fn, out.a_t, out.t, cond=obs)
    (out.loss.mean() + term).backward()
    assert term.ndim == 0 and torch.isfinite(term) and net.body[0].weight.grad is not None
    per = reg.per_sample(eps_fn, out.a_t, out.t, cond=obs)
    assert torch.allclose(term, 0.1 * per.mean())
    sub = ContractionRegularizer(sch, "eps", ContractionConfig(subbatch=16, t_max=0.5))
    got = sub.per_sample(eps_fn, out.a_t, out.t, cond=obs)
    inside = out.t[:16] < 0.5
    assert got.shape == (16,) and torch.allclose(got[inside], per[:16][inside]) and (got[~inside] == 0).all()
    assert ContractionRegularizer(sch, "eps", gamma=0.0)(eps_fn, out.a_t, out.t, cond=obs) == 0
    with pytest.raises(ValueError, match=r"cond\[0\] must be a tensor \[B = 64"):
        reg(eps_fn, out.a_t, out.t, cond=obs[:3])


def test_bad_loss_input_names_the_argument():
    sch = VPSchedule()
    net = gaussian(0.5).denoiser(sch, "eps")
    a = torch.randn(4, 3, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="form"):
        contraction_loss(net, a, t, sch, form="trace")
    with pytest.raises(ValueError, match="prediction"):
        contraction_loss(net, a, t, sch, prediction="v")
    with pytest.raises(ValueError, match="method"):
        contraction_loss(net, a, t, sch, method="svd")
    with pytest.raises(ValueError, match=r"t must be a scalar or \[B\]"):
        contraction_loss(net, a, t[:2], sch)
    with pytest.raises(ValueError, match="t must be finite"):
        contraction_loss(net, a, torch.zeros(4, dtype=torch.float64), sch)
    with pytest.raises(ValueError, match="a_t contains NaN"):
        contraction_loss(net, a * float("nan"), t, sch)
    with pytest.raises(ValueError, match="margin"):
        contraction_loss(net, a, t, sch, margin=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        ContractionConfig(gamma=-1)


@pytest.mark.parametrize("overrides", [{}, {"subbatch": 5}, {"t_max": 0.5}, {"subbatch": 6, "t_max": 0.5, "margin": None},
                                       {"t_max": 0.5, "window": "batch"},
                                       {"method": "lanczos", "iters": 3}])
@pytest.mark.parametrize("single_pass_rows", [0, 10**9])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_fused_regularized_loss_equals_the_two_step_version(overrides, prediction, single_pass_rows):
    """reg.loss(net, x0) (one fused pass for MLPDenoiser) == denoising_loss + reg(...), values and
    parameter gradients, for sub-batches and time windows."""
    from cdp.nets import MLP

    torch.manual_seed(0)
    net = MLP(3, state_dim=4, hidden=32).double()
    sch = VPSchedule()
    x0 = torch.rand(12, 3, dtype=torch.float64) * 2 - 1
    obs = torch.randn(12, 4, dtype=torch.float64)
    t = torch.rand(12, dtype=torch.float64) * 0.98 + 0.01
    noise = torch.randn(12, 3, dtype=torch.float64)
    reg = ContractionRegularizer(sch, prediction, gamma=0.7, **overrides)
    reg.single_pass_rows = single_pass_rows  # both fused strategies
    fused = reg.loss(net, x0, obs, t=t, noise=noise, generator=torch.Generator().manual_seed(0))
    gf = torch.autograd.grad(fused.total, list(net.parameters()))
    out = denoising_loss(net, x0, sch, prediction, t=t, noise=noise, cond=obs)
    term = reg(lambda a, tt, o: net(a, tt, o), out.a_t, out.t, cond=obs, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fused.contraction, term, atol=1e-10)
    assert torch.allclose(fused.denoising.loss, out.loss, atol=1e-12)
    gu = torch.autograd.grad(out.loss.mean() + term, list(net.parameters()))
    for a, b in zip(gf, gu):
        assert torch.allclose(a, b, atol=1e-9)


def test_the_window_keeps_the_official_levels():
    """Official runs: discrete steps k < int(0.1 T), k = 0..T-1, i.e. our i = k + 1 <= 5 of 50."""
    from cdp.contraction import in_window

    sch = VPSchedule.discrete_cosine(50)
    t = sch.sample_t(20_000, num_steps=50, generator=torch.Generator().manual_seed(0))
    levels = lambda w: sorted(set(torch.round(t[in_window(t, 0.1, w)] * 50).long().tolist()))  # noqa: E731
    assert levels("official") == [1, 2, 3, 4, 5]
    assert levels("batch") == [1, 2, 3, 4]
    assert in_window(t, None).all()
    with pytest.raises(ValueError, match="window must be one of"):
        ContractionConfig(window="rows")


def tiny_x0_problem(seed: int, B: int):
    """A small state-conditioned x0 MLP (act 3, obs 4, float64) on a T = 50 cosine schedule, with
    clean actions, states and noise for a batch of ``B``: ``(net, schedule, x0, obs, noise)``."""
    from cdp.nets import MLP

    torch.manual_seed(seed)
    net = MLP(3, state_dim=4, hidden=16).double()
    x0 = torch.rand(B, 3, dtype=torch.float64) * 2 - 1
    return net, VPSchedule.discrete_cosine(50), x0, torch.randn(B, 4, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)


@pytest.mark.parametrize("fused", [True, False])
def test_windowed_term_is_the_mean_over_the_windowed_rows(fused):
    """gamma * mean(L_c over the rows in the window), not a sum over the whole batch; 0 when the
    window is empty; window="batch" is the old sum / B."""
    B = 40
    net, sch, x0, obs, noise = tiny_x0_problem(1, B)
    fn = net if fused else (lambda a, tt, o: net(a, tt, o))  # a closure has no forward_jvp: generic path
    t = torch.tensor([1, 5, 6, 30, 2, 50, 5, 4] * 5, dtype=torch.float64) / 50
    inside = torch.tensor([True, True, False, False, True, False, True, True] * 5)
    a_t = sch.q_sample(x0, t, noise)
    by_hand = contraction_loss(net, a_t[inside], t[inside], sch, "x0", cond=obs[inside])  # every row regularised
    reg = ContractionRegularizer(sch, "x0", gamma=0.3, t_max=0.1)
    term = reg.loss(fn, x0, obs, t=t, noise=noise).contraction if fused else reg(fn, a_t, t, cond=obs)
    assert torch.allclose(term, 0.3 * by_hand.mean(), atol=1e-12)
    assert abs(term.item()) > 1e-4  # not trivially 0
    old = ContractionRegularizer(sch, "x0", gamma=0.3, t_max=0.1, window="batch")
    strict = inside & (t < 0.1)
    by_hand_strict = contraction_loss(net, a_t[strict], t[strict], sch, "x0", cond=obs[strict])
    got_old = old.loss(fn, x0, obs, t=t, noise=noise).contraction if fused else old(fn, a_t, t, cond=obs)
    assert torch.allclose(got_old, 0.3 * by_hand_strict.sum() / B, atol=1e-12)
    high = torch.full((B,), 0.5, dtype=torch.float64)
    empty = reg.loss(fn, x0, obs, t=high, noise=noise).contraction if fused else reg(fn, a_t, high, cond=obs)
    assert empty.item() == 0.0


def test_official_frobenius_is_the_official_mean_over_windowed_rows_and_entries():
    """The official runs' loss_type="jacobian": ((sym J + 0.1 I)^2).mean() over the windowed rows
    and the matrix entries, J the x0 network's exact Jacobian, by hand on a tiny network."""
    B = 16
    net, sch, x0, obs, noise = tiny_x0_problem(2, B)
    t = torch.tensor([1, 3, 5, 6, 20, 50, 2, 9] * 2, dtype=torch.float64) / 50
    a_t = sch.q_sample(x0, t, noise)
    rows = [i for i in range(B) if t[i] <= 0.1 + 1e-9]
    squares = []
    for i in rows:
        J = torch.autograd.functional.jacobian(lambda a: net(a[None], t[i:i + 1], obs[i:i + 1])[0], a_t[i])
        S = 0.5 * (J + J.T) + 0.1 * torch.eye(3, dtype=torch.float64)
        squares.append(S.pow(2))
    by_hand = torch.stack(squares).mean()  # over rows and entries, as the official code
    reg = ContractionRegularizer(sch, "x0", gamma=1.0, margin=0.1, form="official_frobenius", t_max=0.1)
    assert torch.allclose(reg(net, a_t, t, cond=obs), by_hand, atol=1e-12)
    assert torch.allclose(reg.loss(net, x0, obs, t=t, noise=noise).contraction, by_hand, atol=1e-12)
    lit = contraction_loss(net, a_t[rows], t[rows], sch, "x0", margin=0.1, form="literal_frobenius", cond=obs[rows])
    assert torch.allclose(lit.mean() / 9, by_hand, atol=1e-12)  # D^2 = 9 times smaller than literal_frobenius


@pytest.mark.parametrize("fused", [True, False])
def test_term_stats_count_the_rows_above_the_floor(fused):
    B = 40
    net, sch, x0, obs, noise = tiny_x0_problem(3, B)
    fn = net if fused else (lambda a, tt, o: net(a, tt, o))
    t = torch.randint(1, 8, (B,), generator=torch.Generator().manual_seed(0)).double() / 50  # levels 1-7 of 50
    a_t = sch.q_sample(x0, t, noise)
    inside = t <= 0.1 + 1e-9
    rate = contraction_loss(net, a_t[inside], t[inside], sch, "x0", margin=None, cond=obs[inside]).detach()
    margin = -float(rate.median())  # a floor that splits the rows (rates here are about -0.99)
    reg = ContractionRegularizer(sch, "x0", gamma=0.1, margin=margin, t_max=0.1)
    stats = reg.loss(fn, x0, obs, t=t, noise=noise).stats
    assert stats["rows"] == int(inside.sum()) > 2
    assert stats["rate"] == pytest.approx(float(rate.mean()), abs=1e-10)
    assert stats["active"] == pytest.approx(float((rate > -margin).double().mean()))
    assert 0 < stats["active"] < 1


@pytest.mark.parametrize("overrides", [{"t_max": 0.1}, {"t_max": 0.1, "window": "batch"}, {"t_max": 0.1, "subbatch": 25},
                                       {}, {"t_max": 0.1, "margin": None}])
@pytest.mark.parametrize("single_pass_rows", [0, 10**9])
def test_fixed_shape_term_equals_the_gathered_one(overrides, single_pass_rows):
    """static=True (every row through the fused pass, the window as a mask: what a CUDA graph
    records) gives the gathered path's term, parameter gradients and stats; 0 on an empty window."""
    B = 40
    net, sch, x0, obs, noise = tiny_x0_problem(4, B)
    t = torch.tensor([1, 5, 6, 30, 2, 50, 5, 4] * 5, dtype=torch.float64) / 50
    reg = ContractionRegularizer(sch, "x0", gamma=0.3, **overrides)
    reg.single_pass_rows = single_pass_rows
    got = {}
    for static in (False, True):
        out = reg.loss(net, x0, obs, t=t, noise=noise, static=static)
        grads = torch.autograd.grad(out.total, list(net.parameters()))
        got[static] = out, grads
    (g, gg), (s, sg) = got[False], got[True]
    assert abs(g.contraction.item()) > 1e-4
    assert torch.allclose(s.contraction, g.contraction, atol=1e-12)
    assert torch.allclose(s.denoising.loss, g.denoising.loss, atol=1e-12)
    for a, b in zip(gg, sg):
        assert torch.allclose(a, b, atol=1e-10)
    assert g.stats.keys() == s.stats.keys()
    for k in g.stats:
        assert float(s.stats[k]) == pytest.approx(float(g.stats[k]), abs=1e-10)
    if "t_max" in overrides:
        high = torch.full((B,), 0.5, dtype=torch.float64)
        empty = {static: reg.loss(net, x0, obs, t=high, noise=noise, static=static) for static in (False, True)}
        for out in empty.values():  # both paths: no term, and the same stats, each 0
            assert out.contraction.item() == 0.0 and out.stats.keys() == g.stats.keys()
            assert all(float(v) == 0.0 for v in out.stats.values())


def test_top_eigenvector_by_squaring_matches_eigh():
    """The graph-safe solver (no host reads) against LAPACK: spectra whose most negative eigenvalue
    dominates, a near-degenerate top pair, a multiple of I, float64 and float32."""
    from cdp.contraction.eig import top_eigvec_exact, top_eigvec_squaring

    g = torch.Generator().manual_seed(0)
    for D in (2, 3, 6, 8):
        Q = torch.linalg.qr(torch.randn(200, D, D, dtype=torch.float64, generator=g))[0]
        ev = torch.randn(200, D, dtype=torch.float64, generator=g) * 3
        ev[:, 0] -= 60 * torch.rand(200, dtype=torch.float64, generator=g)  # a dominant negative eigenvalue
        ev[:50, 1] = ev[:50].max(1).values - 1e-4  # a near-degenerate top pair
        S = Q @ torch.diag_embed(ev) @ Q.transpose(1, 2)
        top, v = top_eigvec_squaring(S)
        ref = torch.linalg.eigvalsh(S)[:, -1]
        assert torch.allclose(top, ref, rtol=1e-8, atol=1e-8)
        assert torch.allclose(v.norm(dim=1), torch.ones(200, dtype=torch.float64))
        assert torch.allclose(torch.einsum("bij,bj->bi", S, v), top[:, None] * v, atol=1e-3)  # an eigenvector
        top32 = top_eigvec_squaring(S.float())[0]
        assert torch.allclose(top32.double(), ref, rtol=1e-4, atol=1e-4)
        assert torch.allclose(top_eigvec_exact(S, solver="squaring")[0], top_eigvec_exact(S, solver="eigh")[0], atol=1e-8)
    I = 2.5 * torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    top, v = top_eigvec_squaring(I)
    assert torch.allclose(top, torch.full((3,), 2.5, dtype=torch.float64)) and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="solver must be"):
        top_eigvec_exact(I, solver="qr")
