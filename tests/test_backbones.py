"""The action-chunk backbones (1-D UNet, DiT): shapes, conditioning, and the contraction
machinery through them against exact eigenvalues."""

import pytest
import torch

from cdp.contraction import max_sym_eig
from cdp.nets import DiT, UNet1D


def _randomise(net: torch.nn.Module) -> torch.nn.Module:
    """DiT starts as the zero map (adaLN-Zero): give every parameter a random value so the
    Jacobian is a generic, non-symmetric matrix."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return net


NETS = {
    "unet": lambda: UNet1D(2, cond_dim=6, dims=(8, 16), t_dim=8, groups=4),
    "dit": lambda: DiT(2, cond_dim=6, width=16, depth=2, heads=2, t_dim=8),
}


@pytest.mark.parametrize("name", NETS)
def test_shapes_conditioning_and_bad_input(name):
    net = NETS[name]()
    a, t, c = torch.randn(3, 8, 2), torch.rand(3), torch.randn(3, 6)
    assert net(a, t, c).shape == (3, 8, 2)
    with pytest.raises(ValueError, match="cond must be"):
        net(a, t, torch.randn(3, 5))
    with pytest.raises(ValueError, match="a_t must be"):
        net(torch.randn(3, 8, 3), t, c)
    _randomise(net)
    y1, y2 = net(a, t, c), net(a, t, c + 1)
    assert not torch.allclose(y1, y2)  # the observation reaches the output
    assert not torch.allclose(net(a, t + 0.3, c), y1)  # so does time


def test_unet_horizon_must_fit_the_levels():
    with pytest.raises(ValueError, match="divisible"):
        UNet1D(2, dims=(8, 16, 32), groups=4)(torch.randn(1, 6, 2), torch.rand(1))


def test_dit_starts_as_the_zero_map():
    net = DiT(2, cond_dim=6, width=16, depth=2, heads=2)
    assert torch.equal(net(torch.randn(3, 8, 2), torch.rand(3), torch.randn(3, 6)), torch.zeros(3, 8, 2))


@pytest.mark.parametrize("name", NETS)
def test_max_sym_eig_through_the_backbone_is_exact(name):
    torch.manual_seed(0)
    net = _randomise(NETS[name]()).double()
    B, H, d = 3, 4, 2
    a, t, c = torch.randn(B, H, d, dtype=torch.float64), torch.rand(B, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    fn = lambda x: net(x, t, c)  # noqa: E731
    J = torch.stack([torch.autograd.functional.jacobian(lambda x: net(x[None], t[i:i + 1], c[i:i + 1])[0], a[i])
                     .reshape(H * d, H * d) for i in range(B)])
    ref = torch.linalg.eigvalsh((J + J.transpose(1, 2)) / 2)[:, -1]
    assert (ref - torch.linalg.eigvalsh((J + J.transpose(1, 2)) / 2)[:, 0]).abs().min() > 1e-3  # non-trivial spectra
    with torch.no_grad():
        exact = max_sym_eig(fn, a, "exact")
        lanczos = max_sym_eig(fn, a, "lanczos", iters=H * d)
    assert torch.allclose(exact, ref, atol=1e-9) and torch.allclose(lanczos, ref, atol=1e-7)
    lam = max_sym_eig(fn, a, "exact")  # with grad: the Rayleigh quotient reaches the parameters
    lam.sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert no_grad == [{"unet": "final.1.bias", "dit": "out.bias"}[name]]  # only the output bias leaves J alone
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # forward-mode AD runs through the backbone too (torch.func.jvp): J v equals the Jacobian's product
    v = torch.randn(B, H, d, dtype=torch.float64)
    _, jv = torch.func.jvp(fn, (a,), (v,))
    assert torch.allclose(jv.reshape(B, -1), torch.einsum("bij,bj->bi", J, v.reshape(B, -1)), atol=1e-9)
    # ... and, for the UNet, stays differentiable w.r.t. the parameters: the gradient of v^T J v
    # through the JVP equals the one through the Rayleigh quotient (Mish's in-place no-grad path
    # broke this graph). Not asserted for the DiT: backward through torch.func.jvp of it gives
    # wrong parameter gradients in torch 2.13 (checked against finite differences); the library
    # never differentiates through torch.func.jvp (max_sym_eig uses reverse mode).
    if name != "unet":
        return
    net.zero_grad()
    _, jv = torch.func.jvp(fn, (a,), (v,))
    (v * jv).sum().backward()
    g_fwd = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    net.zero_grad()
    x = a.clone().requires_grad_(True)
    (v * torch.autograd.grad(fn(x), x, v, create_graph=True)[0]).sum().backward()
    g_rev = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(g_fwd) == len(g_rev) and all(torch.allclose(f, r, atol=1e-9) for f, r in zip(g_fwd, g_rev))
