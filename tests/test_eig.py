import pytest
import torch
from conftest import random_sym_spectrum_map
from torch import nn

from cdp.contraction import jacobian, max_sym_eig

B, D = 6, 10


def dominant_negative_spectrum():
    # most negative eigenvalue dominates in magnitude; plain power iteration would return -10
    return torch.cat([torch.tensor([-10.0, -7.0]), torch.linspace(-3.0, 1.0, D - 2)]).double()


@pytest.mark.parametrize("method,iters", [("exact", 1), ("lanczos", D), ("power", 300), ("auto", D)])
def test_largest_algebraic_eigenvalue_of_linear_maps(method, iters):
    A, fn = random_sym_spectrum_map(B, D, dominant_negative_spectrum())
    want = torch.linalg.eigvalsh(0.5 * (A + A.transpose(1, 2)))[:, -1]
    assert torch.allclose(want, torch.ones(B, dtype=torch.float64))
    got = max_sym_eig(fn, torch.randn(B, D, dtype=torch.float64), method, iters, exact_max_dim=4)
    assert torch.allclose(got, want, atol=1e-6 if method != "power" else 1e-3)


def test_all_negative_spectrum_is_not_mistaken_for_its_magnitude():
    ev = torch.linspace(-9.0, -2.0, D).double()
    A, fn = random_sym_spectrum_map(B, D, ev)
    for method, iters in [("exact", 1), ("lanczos", D), ("power", 300)]:
        got = max_sym_eig(fn, torch.randn(B, D, dtype=torch.float64), method, iters)
        assert torch.allclose(got, torch.full((B,), -2.0, dtype=torch.float64), atol=1e-3), method


def test_few_lanczos_steps_give_a_lower_bound_that_improves():
    A, fn = random_sym_spectrum_map(B, D, dominant_negative_spectrum())
    x = torch.randn(B, D, dtype=torch.float64)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    vals = [max_sym_eig(fn, x, "lanczos", k, generator=g()) for k in (2, 4, 7, D)]
    for lo, hi in zip(vals, vals[1:]):
        assert (lo <= hi + 1e-9).all()
    assert (vals[0] <= 1 + 1e-9).all() and torch.allclose(vals[-1], torch.ones(B, dtype=torch.float64))


def test_lanczos_breakdown_on_a_multiple_of_identity():
    x = torch.randn(3, 7, dtype=torch.float64)
    got = max_sym_eig(lambda a: -2.5 * a, x, "lanczos", 5)
    assert torch.allclose(got, torch.full((3,), -2.5, dtype=torch.float64))


def small_mlp(d_in=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, 32), nn.Mish(), nn.Linear(32, d_in)).double()


def autograd_sym_lambda_max(net, x):
    J = torch.stack([torch.autograd.functional.jacobian(lambda z: net(z[None])[0], xb) for xb in x])
    return torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, -1], J


@pytest.mark.parametrize("method,iters", [("exact", 1), ("lanczos", 4)])
def test_mlp_against_autograd_jacobian(method, iters):
    net = small_mlp()
    x = torch.randn(8, 4, dtype=torch.float64)
    want, J = autograd_sym_lambda_max(net, x)
    assert torch.allclose(jacobian(net, x), J, atol=1e-10)
    assert torch.allclose(max_sym_eig(net, x, method, iters), want, atol=1e-8)


def test_action_chunks_are_flattened_per_sample():
    H, d = 4, 3
    A, fn = random_sym_spectrum_map(5, H * d, torch.linspace(-6, 2, H * d).double())
    chunk_fn = lambda a: fn(a.reshape(5, -1)).reshape(5, H, d)  # noqa: E731
    x = torch.randn(5, H, d, dtype=torch.float64)
    lam, v = max_sym_eig(chunk_fn, x, "lanczos", H * d, return_vector=True)
    assert torch.allclose(lam, torch.full((5,), 2.0, dtype=torch.float64), atol=1e-8)
    assert v.shape == x.shape
    assert torch.allclose(max_sym_eig(chunk_fn, x, "exact", exact_max_dim=H * d), lam, atol=1e-8)


def test_sample_wise_state_conditioning_by_closure():
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    s = torch.randn(7, 2, dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    fn = lambda a: net(torch.cat([a, s], -1))  # noqa: E731
    per_sample = torch.cat([max_sym_eig(lambda a: net(torch.cat([a, s[i : i + 1]], -1)), x[i : i + 1], "exact") for i in range(7)])
    assert torch.allclose(max_sym_eig(fn, x, "exact"), per_sample, atol=1e-10)
    assert torch.allclose(max_sym_eig(fn, x, "lanczos", 3), per_sample, atol=1e-8)


@pytest.mark.parametrize("method,iters", [("exact", 1), ("lanczos", 4), ("power", 200)])
def test_gradient_wrt_parameters_matches_finite_differences(method, iters):
    net = small_mlp(seed=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    w = net[2].weight
    lam = max_sym_eig(net, x, method, iters, generator=torch.Generator().manual_seed(0)).sum()
    (grad,) = torch.autograd.grad(lam, w)
    # central differences on a few entries
    h = 1e-6
    for i, j in [(0, 0), (3, 7), (10, 2), (31, 31)]:
        with torch.no_grad():
            w[i, j] += h
            up = max_sym_eig(net, x, "exact").sum()
            w[i, j] -= 2 * h
            dn = max_sym_eig(net, x, "exact").sum()
            w[i, j] += h
        assert float(grad[i, j]) == pytest.approx(float((up - dn) / (2 * h)), rel=1e-4, abs=1e-7)


def test_hellmann_feynman_gradient_equals_gradient_through_eigvalsh():
    net = small_mlp(seed=2)
    x = torch.randn(5, 4, dtype=torch.float64)
    lam = max_sym_eig(net, x, "exact").sum()
    params = list(net.parameters())[:-1]  # the last bias does not enter the Jacobian
    g1 = torch.autograd.grad(lam, params)
    J = jacobian(net, x)
    ref = torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, -1].sum()
    g2 = torch.autograd.grad(ref, params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)


def test_no_graph_when_grad_disabled():
    net = small_mlp()
    with torch.no_grad():
        lam = max_sym_eig(net, torch.randn(4, 4, dtype=torch.float64))
    assert not lam.requires_grad


def test_bad_input_names_the_argument():
    fn = lambda a: a  # noqa: E731
    with pytest.raises(ValueError, match="method"):
        max_sym_eig(fn, torch.randn(2, 3), "arnoldi")
    with pytest.raises(ValueError, match="x contains NaN"):
        max_sym_eig(fn, torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"x must be \[B, \*shape\]"):
        max_sym_eig(fn, torch.randn(3))
    with pytest.raises(ValueError, match="iters"):
        max_sym_eig(fn, torch.randn(2, 3), "power", 0)
    with pytest.raises(ValueError, match="same shape"):
        max_sym_eig(lambda a: a[:, :2], torch.randn(2, 3), "exact")


def test_inference_mode_gives_a_clear_error_and_inference_tensors_are_accepted():
    net = small_mlp()
    with torch.inference_mode():
        x = torch.randn(4, 4, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="outside torch.inference_mode"):
            max_sym_eig(net, x)
    with torch.no_grad():
        assert max_sym_eig(net, x).shape == (4,)  # x is an inference tensor
