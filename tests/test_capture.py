"""The CPU side of CUDA-graph training (cdp.capture): optimiser state that resumes anywhere, the
learning-rate schedule on a tensor, metrics read in one go, the update's three parts. The
recording itself runs in tests/test_cuda.py (needs a GPU)."""

import pytest
import torch

from cdp.capture import GraphedUpdate, host_floats, make_capturable, portable_state, set_lr
from cdp.rl.edp import EDP, EDPConfig


def adam_after_steps(capturable: bool):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        p.pow(2).sum().backward()
        opt.step()
    if capturable:
        make_capturable(opt)
    return p, opt


def test_a_capturable_optimizers_state_resumes_in_an_eager_one():
    """A checkpoint written while the optimiser was set up for graphs (capturable, lr a tensor)
    loads into a plain CPU Adam, which then steps exactly as the never-graphed one does."""
    p_ref, ref = adam_after_steps(capturable=False)
    p_cap, cap = adam_after_steps(capturable=True)
    assert cap.param_groups[0]["capturable"] and isinstance(cap.param_groups[0]["lr"], torch.Tensor)
    with pytest.raises(AssertionError, match="capturable=True"):  # why the state must be made portable
        cap.zero_grad()
        p_cap.pow(2).sum().backward()
        cap.step()
    sd = portable_state(cap)
    assert sd["param_groups"][0]["capturable"] is False and sd["param_groups"][0]["lr"] == pytest.approx(0.1)
    p_new = torch.nn.Parameter(p_ref.detach().clone())
    fresh = torch.optim.Adam([p_new], lr=0.5)
    fresh.load_state_dict(sd)
    for p, opt in ((p_ref, ref), (p_new, fresh)):
        opt.zero_grad()
        p.pow(2).sum().backward()
        opt.step()
    assert torch.equal(p_new, p_ref)


def test_set_lr_fills_a_tensor_in_place_and_assigns_a_float():
    _, opt = adam_after_steps(capturable=True)
    lr = opt.param_groups[0]["lr"]
    set_lr(opt, 0.025)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.025)  # the graph reads this tensor
    _, plain = adam_after_steps(capturable=False)
    set_lr(plain, 0.025)
    assert plain.param_groups[0]["lr"] == 0.025


def test_host_floats_reads_every_metric():
    got = host_floats({"a": torch.tensor(1.5), "b": torch.tensor(2, dtype=torch.int64), "c": torch.tensor(float("nan"))})
    assert got["a"] == 1.5 and got["b"] == 2.0 and got["c"] != got["c"]
    assert host_floats({}) == {}


def test_the_update_is_prepare_compute_advance():
    """update() = prepare + compute + advance: the same losses and weights as calling the parts
    (what GraphedUpdate does around its replay), and the step counter moves in advance alone."""
    torch.manual_seed(0)
    batch = {"obs": torch.randn(32, 4), "act": torch.rand(32, 2) * 2 - 1, "rew": torch.randn(32),
             "next_obs": torch.randn(32, 4), "done": torch.zeros(32)}
    cfg = EDPConfig.official(steps=10, hidden=16, sample_steps=2)
    a, b = EDP(4, 2, cfg), EDP(4, 2, cfg)
    b.actor.load_state_dict(a.actor.state_dict()), b.critic.load_state_dict(a.critic.state_dict())
    b.actor_ema.load_state_dict(a.actor_ema.state_dict()), b.critic_target.load_state_dict(a.critic_target.state_dict())
    for _ in range(6):
        state = torch.get_rng_state()
        m1 = a.update(batch)
        torch.set_rng_state(state)
        b.prepare()
        m2 = b.compute(batch)
        assert b.step == a.step - 1
        b.advance()
        assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    for x, y in zip(a.actor_ema.parameters(), b.actor_ema.parameters()):
        assert torch.equal(x, y)
    assert a.actor_opt.param_groups[0]["lr"] == b.actor_opt.param_groups[0]["lr"] < cfg.lr


def test_graphs_need_a_cuda_agent():
    with pytest.raises(ValueError, match="CUDA graphs need an agent on a CUDA device"):
        GraphedUpdate(EDP(4, 2, EDPConfig(hidden=16)))


def test_draw_one_is_torch_multinomial_without_the_host_check():
    """The same indices as torch.multinomial(p, 1) from the same generator state, and the
    generator left where multinomial leaves it."""
    from cdp.rl.agent import draw_one

    p = torch.softmax(torch.randn(64, 100, generator=torch.Generator().manual_seed(1)) * 3, 1)
    torch.manual_seed(0)
    ref, after_ref = torch.multinomial(p, 1).squeeze(1), torch.rand(3)
    torch.manual_seed(0)
    got, after_got = draw_one(p), torch.rand(3)
    assert torch.equal(got, ref) and torch.equal(after_got, after_ref)
    assert len(set(got.tolist())) > 10  # really random, not an argmax


#: modules whose hot paths change while a graph is recorded (host reads skipped, windows masked)
CAPTURE_AWARE = ("cdp.contraction.eig", "cdp.contraction.loss", "cdp.contraction.regularizer", "cdp.diffusion.loss",
                 "cdp.diffusion.samplers", "cdp.contraction.finite_differences")


def as_if_recording(monkeypatch) -> None:
    """Run the code paths a CUDA graph records, on the CPU (the recording itself needs a GPU)."""
    import importlib

    for name in CAPTURE_AWARE:
        monkeypatch.setattr(importlib.import_module(name), "capturing", lambda: True)


@pytest.mark.parametrize("case", ["unet-lanczos", "unet-power", "mlp-generic", "mlp-generic-batch-window"])
def test_the_terms_recorded_path_gives_the_eager_value_and_gradients(monkeypatch, case):
    """The generic term (autograd products, Lanczos / power search, the t window) computed as a
    graph records it (no host reads, every row, the window as a mask) equals the eager one."""
    from cdp.contraction import ContractionRegularizer
    from cdp.diffusion import VPSchedule
    from cdp.nets import MLP, UNet1D

    torch.manual_seed(0)
    B = 12
    if case.startswith("unet"):
        net = UNet1D(2, cond_dim=5, dims=(8, 16)).double()
        a_t, cond = torch.randn(B, 8, 2, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    else:
        net = MLP(3, state_dim=4, hidden=16).double()
        a_t, cond = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 4, dtype=torch.float64)
    fn = lambda a, t, c: net(a, t, c)  # noqa: E731  (a closure: the generic path)
    t = torch.tensor([1, 3, 5, 9, 30, 50] * 2, dtype=torch.float64) / 50
    # Lanczos with iters = D is exact: its random start (drawn for every row while recording, for the
    # window's rows eagerly) does not change the value
    kw = {"unet-lanczos": dict(t_max=0.2, method="lanczos", iters=16), "unet-power": dict(method="power", iters=6),
          "mlp-generic": dict(t_max=0.1), "mlp-generic-batch-window": dict(t_max=0.1, window="batch")}[case]
    reg = ContractionRegularizer(VPSchedule.discrete_cosine(50), "eps", gamma=0.5, **kw)

    def term():
        val = reg(fn, a_t, t, cond=cond, generator=torch.Generator().manual_seed(7))
        grads = torch.autograd.grad(val, list(net.parameters()), allow_unused=True)  # biases out of J: unused
        return val, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(net.parameters(), grads)]

    eager, g_eager = term()
    as_if_recording(monkeypatch)
    rec, g_rec = term()
    assert abs(eager.item()) > 1e-6
    assert torch.allclose(rec, eager, atol=1e-12)
    for a, b in zip(g_eager, g_rec):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(subbatch=8), dict(t_max=0.2), dict()], ids=["subbatch", "window", "every-row"])
def test_the_default_term_by_finite_differences_records_as_it_runs_eagerly(monkeypatch, kw):
    """The library's default on a UNet (the exact eigenvalue, products by finite differences) in
    the fused ``reg.loss``, computed as a graph records it (every row, the window as a mask), gives
    the eager value and parameter gradients."""
    from cdp.contraction import ContractionConfig, ContractionRegularizer
    from cdp.diffusion import VPSchedule
    from cdp.nets import UNet1D

    torch.manual_seed(0)
    B = 12
    net = UNet1D(2, cond_dim=5, dims=(8, 16)).double()
    x0, cond = torch.rand(B, 8, 2, dtype=torch.float64) * 2 - 1, torch.randn(B, 5, dtype=torch.float64)
    t = torch.tensor([1, 3, 5, 9, 30, 50] * 2, dtype=torch.float64) / 50
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reg = ContractionRegularizer(VPSchedule.discrete_cosine(50), "eps", ContractionConfig(gamma=0.5, margin=None, **kw))

    def term():
        out = reg.loss(net, x0, cond, t=t, noise=noise)
        grads = torch.autograd.grad(out.contraction, list(net.parameters()), allow_unused=True)
        return out.contraction, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(net.parameters(), grads)]

    eager, g_eager = term()
    as_if_recording(monkeypatch)
    rec, g_rec = term()
    assert abs(eager.item()) > 1e-6
    torch.testing.assert_close(rec, eager, rtol=1e-9, atol=1e-12)
    for a, b in zip(g_eager, g_rec):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("config", ["cdp", "cdp-official", "idql-cdp"])
def test_an_update_on_the_recorded_paths_equals_the_eager_update(monkeypatch, config):
    """A whole offline-RL update run through the paths a graph records (the fused term on every row
    with the window as a mask, no host checks) trains as the eager update does."""
    import copy

    from cdp.contraction import ContractionConfig
    from cdp.rl.iql import IDQL, IDQLConfig

    torch.manual_seed(0)
    term = ContractionConfig(t_max=0.1)
    eager = {"cdp": lambda: EDP(4, 2, EDPConfig(hidden=16, sample_steps=3, contraction=term)),
             "cdp-official": lambda: EDP(4, 2, EDPConfig.official(10, hidden=16, sample_steps=3, contraction=term)),
             "idql-cdp": lambda: IDQL(4, 2, IDQLConfig(hidden=16, sample_steps=3, contraction=term))}[config]()
    recorded = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(1)
    batches = [{"obs": torch.randn(64, 4, generator=g), "act": torch.rand(64, 2, generator=g) * 2 - 1,
                "rew": torch.randn(64, generator=g), "next_obs": torch.randn(64, 4, generator=g),
                "done": torch.zeros(64)} for _ in range(4)]
    torch.manual_seed(5)
    m_eager = [host_floats(eager.update(b)) for b in batches]
    as_if_recording(monkeypatch)
    torch.manual_seed(5)
    m_rec = [host_floats(recorded.update(b)) for b in batches]
    assert any(m["contraction"] != 0 for m in m_eager)
    for a, b in zip(m_eager, m_rec):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
    for x, y in zip(eager.actor.parameters(), recorded.actor.parameters()):
        assert torch.allclose(x, y, atol=1e-6)
