"""The term through finite differences on forward rows (products="fd"): values and parameter
gradients against the exact Jacobian in float64, on networks with and without double backward."""

import pytest
import torch
from torch import nn

from cdp.contraction import ContractionConfig, ContractionRegularizer, FiniteDifferences, jacobian, max_sym_eig
from cdp.contraction.loss import NetAt
from cdp.diffusion import VPSchedule
from cdp.nets import DiT, MLPDenoiser, UNet1D


def _perturbed(net: nn.Module, seed: int) -> nn.Module:
    """Random parameters everywhere (DiT starts at output 0: adaLN-Zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


NETS = {
    "mlp": (lambda: MLPDenoiser((6,), 5, hidden=32), (6,)),
    "unet1d": (lambda: UNet1D(2, 5, dims=(8, 16), t_dim=8, groups=4), (4, 2)),
    "dit": (lambda: DiT(2, 5, width=16, depth=1, heads=2, t_dim=8), (4, 2)),
}


def _setup(name: str, B: int = 6):
    make, shape = NETS[name]
    torch.manual_seed(0)
    net = _perturbed(make().double(), 1)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(B, *shape, generator=g, dtype=torch.float64) * 2 - 1
    s = torch.randn(B, 5, generator=g, dtype=torch.float64)
    return net, x0, s


@pytest.mark.parametrize("name", list(NETS))
def test_products_match_the_exact_jacobian(name):
    net, a, s = _setup(name)
    t = torch.linspace(0.05, 0.9, a.shape[0], dtype=torch.float64)
    J = jacobian(lambda x: net(x, t, s), a, create_graph=False)  # [B, D, D] by autograd
    B, D = J.shape[:2]
    tan = torch.randn(3, B, *a.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = torch.einsum("bij,kbj->kbi", J, tan.reshape(3, B, D))
    fd = FiniteDifferences(net)
    out, jt = fd.forward_jvp(a, t, s, tangent=tan)  # central (the default, grad enabled): O(eps^2) ~ 1e-11
    torch.testing.assert_close(out, net(a, t, s))
    torch.testing.assert_close(jt.reshape(3, B, D), want, rtol=1e-7, atol=1e-8)
    out_p, jt_p = fd.forward_jvp(a, t, s, tangent=tan, primal=out)  # the base rows given: probe rows only
    assert out_p is not None and jt_p.requires_grad
    torch.testing.assert_close(jt_p, jt)
    out_f, jt_f = FiniteDifferences(net, scheme="forward").forward_jvp(a, t, s, tangent=tan)  # O(eps) ~ 1e-8
    torch.testing.assert_close(out_f, out)
    torch.testing.assert_close(jt_f.reshape(3, B, D), want, rtol=1e-5, atol=1e-6)
    assert jt_f.requires_grad  # with grad enabled the forward difference keeps its graph
    with torch.no_grad():  # the search's one-sided form: O(eps) = O(sqrt(u)) ~ 1e-8 in float64
        jt1 = fd.forward_jvp(a, t, s, tangent=tan)[1]
    torch.testing.assert_close(jt1.reshape(3, B, D), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # an iterative search passes the primal it has: probe rows only, same products
        out2, jt2 = fd.forward_jvp(a, t, s, tangent=tan, primal=out.detach())
    torch.testing.assert_close(jt2.reshape(3, B, D), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out2, out.detach())
    idx = torch.tensor([4, 1])  # tangents for a subset of the rows, the primal for all
    out, jt = fd.forward_jvp(a, t, s, tangent=tan[:, idx], index=idx)
    assert out.shape == a.shape
    torch.testing.assert_close(jt.reshape(3, 2, D), want[:, idx], rtol=1e-7, atol=1e-8)


def _grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in net.parameters()])


# float64 tolerances of each scheme's O(eps^2) / O(eps) error (values, then parameter gradients)
TOL = {"central": (1e-6, 1e-5), "forward": (1e-5, 1e-4)}


@pytest.mark.parametrize("subbatch", [5, None])  # some rows (one call: denoising + probe rows), every row
@pytest.mark.parametrize("scheme", list(TOL))
@pytest.mark.parametrize("method", ["exact", "lanczos"])
@pytest.mark.parametrize("name", list(NETS))
def test_term_and_its_parameter_gradient_match_autograd(name, method, scheme, subbatch):
    net, x0, s = _setup(name, B=8)
    sch = VPSchedule()
    res = {}
    for products in ("autograd", "fd"):
        cfg = ContractionConfig(gamma=1.0, margin=None, method=method, iters=3, exact_max_dim=64, products=products,
                                subbatch=subbatch, fd_scheme=scheme)
        reg = ContractionRegularizer(sch, "eps", cfg)
        out = reg.loss(net, x0, s, generator=torch.Generator().manual_seed(4))
        net.zero_grad()
        (out.total).backward()
        res[products] = (out.contraction.detach(), out.denoising.loss.detach(), _grads(net))
    (ca, da, ga), (cf, df, gf) = res["autograd"], res["fd"]
    torch.testing.assert_close(df, da)  # the denoising rows are the same rows of the same call
    rv, rg = TOL[scheme]
    torch.testing.assert_close(cf, ca, rtol=rv, atol=1e-8)
    assert ga.abs().max() > 0
    torch.testing.assert_close(gf, ga, rtol=rg, atol=rg / 10 * float(ga.abs().max()))


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh with a hand-written backward that cannot itself be differentiated (as many fused
    kernels and custom ops are): autograd's double backward fails on it."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class TwoLayer(nn.Module):
    def __init__(self, d: int, width: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w1 = nn.Parameter(torch.randn(width, d, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(d, width, generator=g, dtype=torch.float64) / width**0.5)

    def forward(self, a, t, *cond):
        return _OnceDifferentiableTanh.apply(a @ self.w1.T) @ self.w2.T


def test_a_network_without_double_backward_trains_through_finite_differences():
    net, d = TwoLayer(3, 16), 3
    a = torch.randn(7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = torch.full((7,), 0.3, dtype=torch.float64)
    # the exact eigenvalue by hand: J = W2 diag(1 - tanh(W1 a)^2) W1
    u = 1 - torch.tanh(a @ net.w1.T) ** 2
    J = torch.einsum("ik,bk,kj->bij", net.w2, u, net.w1)
    want = torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, -1]
    with pytest.raises(RuntimeError):  # autograd's route needs the backward's backward
        max_sym_eig(lambda x: net(x, t), a, "lanczos", 3).sum().backward()
    w1 = net.w1.detach().requires_grad_(True)
    u = 1 - torch.tanh(a @ w1.T) ** 2
    J = torch.einsum("ik,bk,kj->bij", net.w2.detach(), u, w1)
    torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, -1].sum().backward()
    assert w1.grad.abs().max() > 0.1  # so the tolerance below is small against the gradient
    for scheme, rtol in (("central", 1e-7), ("forward", 1e-5)):
        net.zero_grad()
        got = max_sym_eig(NetAt(FiniteDifferences(net, scheme=scheme), t, ()), a, "exact")
        torch.testing.assert_close(got.detach(), want, rtol=rtol, atol=rtol / 100)
        got.sum().backward()  # and its gradient reaches the parameters by plain backward
        # The Hellmann-Feynman gradient is first-order in the eigenvector's error, and the
        # eigenvector comes from a one-sided difference Jacobian (float64 rounding ~1e-8, over an
        # eigen-gap as small as 0.024 here): ~1e-7, by how the machine's BLAS rounds.
        torch.testing.assert_close(net.w1.grad, w1.grad, rtol=1e-4, atol=1e-6)
    reg = ContractionRegularizer(VPSchedule(), "eps", products="fd", gamma=1.0)
    out = reg.loss(net, a, generator=torch.Generator().manual_seed(0))
    out.total.backward()  # the fused step runs on it too
    assert torch.isfinite(out.contraction)


def test_products_option_routes_the_network():
    net = MLPDenoiser((3,), 4, hidden=16)
    calls = []
    orig = net.forward_jvp
    net.forward_jvp = lambda *a, **k: calls.append(1) or orig(*a, **k)
    x0, s = torch.rand(8, 3) * 2 - 1, torch.randn(8, 4)
    sch = VPSchedule()
    ContractionRegularizer(sch, "eps", products="auto").loss(net, x0, s)
    assert calls, "auto uses the network's own forward_jvp"
    calls.clear()
    ContractionRegularizer(sch, "eps", products="autograd").loss(net, x0, s)
    ContractionRegularizer(sch, "eps", products="fd").loss(net, x0, s)
    assert not calls
    auto = ContractionRegularizer(sch, "eps")  # the default
    assert auto.products(net) is net  # the network's own products first
    assert isinstance(auto.products(UNet1D(2, 0, dims=(8,))), FiniteDifferences)  # a module: finite differences
    closure = lambda a, t: a  # noqa: E731  (cannot be inspected: autograd)
    assert auto.products(closure) is closure
    bn = _Wrap(nn.BatchNorm1d(3))  # mixes rows in training mode: autograd, no error
    assert auto.products(bn) is bn and isinstance(auto.products(bn.eval()), FiniteDifferences)
    assert ContractionRegularizer(sch, "eps", products="native").products(UNet1D(2, 0, dims=(8,))).__class__ is UNet1D
    assert isinstance(ContractionRegularizer(sch, "eps", products="fd").products(net), FiniteDifferences)


def test_bad_input_gives_one_clear_line():
    with pytest.raises(ValueError, match="products must be one of"):
        ContractionConfig(products="forward")
    with pytest.raises(ValueError, match="fd_eps"):
        ContractionConfig(fd_eps=0.0)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="BatchNorm1d in training mode"):
        FiniteDifferences(_Wrap(bn))
    drop = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    with pytest.raises(ValueError, match="Dropout"):
        FiniteDifferences(_Wrap(drop))
    FiniteDifferences(_Wrap(bn.eval()))  # eval mode: per-sample again
    a, t = torch.randn(4, 3), torch.rand(4)
    with pytest.raises(ValueError, match="same shape"):
        FiniteDifferences(lambda a, t: a[:, :2]).forward_jvp(a, t, tangent=torch.randn(1, 4, 3))
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        FiniteDifferences(lambda a, t: a / 0).forward_jvp(a, t, tangent=torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="tangent must be"):
        FiniteDifferences(lambda a, t: a).forward_jvp(a, t, tangent=torch.randn(4, 3))


class _Wrap(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, a, t, *cond):
        return self.m(a)


def test_the_default_estimate_is_exact_on_a_robomimic_size_chunk():
    """16 x 7 chunks (D = 112, robomimic's): ContractionConfig() takes the exact largest eigenvalue
    (the full Jacobian, as the official code does); Lanczos 4, the earlier default above 32
    numbers, is a lower bound that misses it on this network."""
    torch.manual_seed(0)
    net = _perturbed(UNet1D(7, 5, dims=(8, 16), t_dim=8, groups=4).double(), 1)
    g = torch.Generator().manual_seed(2)
    B = 3
    x0 = torch.rand(B, 16, 7, generator=g, dtype=torch.float64) * 2 - 1
    s = torch.randn(B, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.8], dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sch = VPSchedule()
    a_t = sch.q_sample(x0, t, noise)
    f, h = sch.sampling_ode_coefficients(t, "eps")
    J = jacobian(lambda x: net(x, t, s), a_t, create_graph=False)  # autograd, [B, 112, 112]
    sym = torch.sign(h)[:, None, None] * (J + J.transpose(1, 2)) / 2
    want = (f / h.abs() + torch.linalg.eigvalsh(sym)[:, -1]).mean()  # gamma 1, no hinge: mean lambda

    def term(cfg: ContractionConfig) -> torch.Tensor:
        reg = ContractionRegularizer(sch, "eps", cfg)
        return reg.loss(net, x0, s, t=t, noise=noise, generator=torch.Generator().manual_seed(4)).contraction.detach()

    assert ContractionConfig().exact_max_dim >= 112
    torch.testing.assert_close(term(ContractionConfig(gamma=1.0, margin=None)), want, rtol=1e-6, atol=1e-8)
    lanczos4 = term(ContractionConfig(gamma=1.0, margin=None, exact_max_dim=8))
    assert lanczos4 < want - 1e-3  # a Ritz value: below the top, here by more than the fd error
    with pytest.raises(ValueError, match="exact_max_dim"):
        ContractionConfig(exact_max_dim=0)
