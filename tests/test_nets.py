import pytest
import torch
from torch import nn

from cdp.contraction import contraction_loss, jacobian, max_sym_eig
from cdp.contraction.loss import NetAt
from cdp.diffusion import VPSchedule
from cdp.nets import MLP, Mish
from cdp.nets.mlp import _MishJvp


def test_mlp_shapes_and_defaults():
    net = MLP(6, state_dim=17)
    hidden = [m for m in net.mid if isinstance(m, nn.Linear)]
    assert [m.out_features for m in hidden] == [256, 256, 256, 6]  # 3 x 256 as DQL/EDP
    a, t, s = torch.randn(5, 6), torch.rand(5), torch.randn(5, 17)
    assert net(a, t, s).shape == (5, 6)
    chunk = MLP((16, 7), state_dim=4, hidden=32)
    assert chunk(torch.randn(3, 16, 7), torch.rand(3), torch.randn(3, 4)).shape == (3, 16, 7)


def test_mish_matches_torch():
    x = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    assert torch.allclose(Mish()(x), nn.functional.mish(x), atol=1e-12)


@pytest.mark.parametrize("n", [100, 5000])  # below and above the size where sampling uses torch's kernel
def test_mish_without_autograd_matches_the_formula(n):
    x = torch.linspace(-30, 30, n)
    with torch.no_grad():
        y = Mish()(x.clone())
    assert torch.allclose(y, x * torch.tanh(nn.functional.softplus(x)), rtol=1e-6, atol=1e-6)


def test_mish_with_autograd_has_exact_derivatives_of_every_order():
    """First and second derivatives (backward, double backward, forward mode) against
    finite differences, and the torch.func transforms against the composite formula."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap

    mish = Mish()
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mish, (z,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(mish, (z,))

    def ref(x):
        return x * torch.tanh(nn.functional.softplus(x))

    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(vmap(mish)(x), ref(x), atol=1e-12)
    assert torch.allclose(jvp(mish, (x,), (x,))[1], jvp(ref, (x,), (x,))[1], atol=1e-12)
    assert torch.allclose(hessian(lambda v: mish(v).sum())(x[0]), hessian(lambda v: ref(v).sum())(x[0]), atol=1e-12)
    assert torch.allclose(jacfwd(jacfwd(mish))(x[0]), jacfwd(jacfwd(ref))(x[0]), atol=1e-12)
    assert torch.allclose(jacrev(jacrev(mish))(x[0]), jacrev(jacrev(ref))(x[0]), atol=1e-12)
    g = torch.randn(6, 5, dtype=torch.float64)
    batched = torch.autograd.grad(mish(z), z, torch.stack([g, 2 * g]), is_grads_batched=True)[0]
    assert torch.allclose(batched[1], 2 * batched[0]) and torch.allclose(batched[0], torch.autograd.grad(ref(z), z, g)[0])


def test_mish_jvp_function_gradcheck():
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    zd = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_MishJvp.apply, (z, zd))


def test_forward_jvp_equals_autograd():
    torch.manual_seed(0)
    net = MLP((2, 3), state_dim=4, hidden=32).double()
    a, t, s = torch.randn(5, 2, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    tangent = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    y, yd = net.forward_jvp(a, t, s, tangent=tangent)
    assert torch.allclose(y, net(a, t, s))
    for k in range(2):
        ref = torch.func.jvp(lambda x: net(x, t, s), (a,), (tangent[k],))[1]
        assert torch.allclose(yd[k], ref, atol=1e-12)
    fused = NetAt(net, t, (s,))
    assert hasattr(fused, "forward_jvp")
    J_auto = jacobian(lambda x: net(x, t, s), a)  # a closure: autograd path
    assert torch.allclose(jacobian(fused, a), J_auto, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_fused_and_generic_paths_agree_in_value_and_gradient(method):
    """A network with forward_jvp and the same network behind a plain closure give the same
    loss and the same parameter gradient."""
    torch.manual_seed(0)
    net = MLP(5, state_dim=3, hidden=32).double()
    sch = VPSchedule()
    a, t, s = torch.randn(7, 5, dtype=torch.float64), torch.rand(7, dtype=torch.float64) * 0.9 + 0.05, torch.randn(7, 3, dtype=torch.float64)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    vals, grads = [], []
    for fn in (net, lambda x, tt, ss: net(x, tt, ss)):
        L = contraction_loss(fn, a, t, sch, "eps", margin=None, method=method, iters=5, cond=s, generator=g())
        vals.append(L)
        grads.append(torch.autograd.grad(L.sum(), list(net.parameters()), allow_unused=True))
    assert torch.allclose(vals[0], vals[1], atol=1e-10)
    for g1, g2 in zip(*grads):
        if g1 is None or g2 is None:
            assert g1 is None or torch.count_nonzero(g1) == 0
            continue
        assert torch.allclose(g1, g2, atol=1e-9)
    assert torch.allclose(max_sym_eig(lambda x: net(x, t, s), a, "exact"),
                          max_sym_eig(lambda x: net(x, t, s), a, "lanczos", 5), atol=1e-8)


def test_bad_network_input():
    net = MLP(3, state_dim=2)
    with pytest.raises(ValueError, match="a_t has shape"):
        net(torch.randn(4, 5), torch.rand(4), torch.randn(4, 2))
    with pytest.raises(ValueError, match="state must be"):
        net(torch.randn(4, 3), torch.rand(4), None)
    with pytest.raises(ValueError, match="tangent must be"):
        net.forward_jvp(torch.randn(4, 3), torch.rand(4), torch.randn(4, 2), tangent=torch.randn(4, 3))
