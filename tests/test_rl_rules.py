"""The offline-RL learning rules against hand computations on tiny batches: the TD target with
the minimum of the twin target critics, done masks, the actor's Q term, the EMA schedule."""

import numpy as np
import pytest
import torch
from torch import nn

from cdp.data import Transitions
from cdp.rl.edp import EDP, EDPConfig
from cdp.rl.trainer import transition_tensors

OBS, ACT = 3, 2


class KnownTwin(nn.Module):
    """A target critic with known heads: Q1 = sum(s') + sum(a'), Q2 = 2 s'_0 - a'_1."""

    def forward(self, obs, act):
        return obs.sum(-1) + act.sum(-1), 2 * obs[:, 0] - act[:, 1]

    def min_q(self, obs, act):
        return torch.minimum(*self(obs, act))


def tiny_batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, OBS, generator=g), "act": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rew": torch.randn(B, generator=g), "next_obs": torch.randn(B, OBS, generator=g),
            "done": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])[:B]}


def test_critic_loss_is_the_td_error_to_the_min_of_the_twin_targets():
    torch.manual_seed(0)
    agent = EDP(OBS, ACT, EDPConfig(hidden=16, sample_steps=2, discount=0.9))
    agent.critic_target = KnownTwin()
    a2 = torch.rand(6, ACT) * 2 - 1
    agent.sample_actions = lambda obs, ema=True, x_T=None, step_noise=None: a2  # the policy's next actions, fixed
    b = tiny_batch()
    with torch.no_grad():
        q1, q2 = agent.critic(b["obs"], b["act"])
    metrics = agent.update(b)
    s2 = b["next_obs"]
    by_hand = []
    for i in range(6):
        t1 = float(s2[i].sum() + a2[i].sum())
        t2 = float(2 * s2[i, 0] - a2[i, 1])
        boot = 0.0 if b["done"][i] == 1 else 0.9 * min(t1, t2)  # a terminal does not bootstrap
        y = float(b["rew"][i]) + boot
        by_hand.append(((float(q1[i]) - y) ** 2, (float(q2[i]) - y) ** 2))
    loss = np.mean([a for a, _ in by_hand]) + np.mean([c for _, c in by_hand])
    assert metrics["critic_loss"] == pytest.approx(loss, rel=1e-5)


def test_a_timeout_is_bootstrapped_a_terminal_is_not():
    ep = lambda term, trunc: {"observations": np.arange(9, dtype=float).reshape(3, 3), "actions": np.zeros((2, 1)),  # noqa: E731
                              "rewards": np.ones(2), "terminations": np.array([0, term]), "truncations": np.array([0, trunc])}
    data = Transitions.from_episodes([ep(1, 0), ep(0, 1)])  # the first ends in a terminal, the second times out
    t = transition_tensors(data)
    assert t["done"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_actor_q_term_is_minus_q1_over_its_mean_magnitude():
    """L_pi's Q term: -mean Q1(s, a0_hat) / mean |Q1(s, a0_hat)| (normaliser without gradient),
    a0_hat the clipped one-call x0 estimate; its sign makes a larger Q a smaller loss."""
    torch.manual_seed(0)
    agent = EDP(OBS, ACT, EDPConfig(hidden=16, sample_steps=2))
    seen = []

    class Head(nn.Module):  # Q1(x) = 3 a_0 - 1 + 0.5 s_1, recording its inputs
        def forward(self, x):
            seen.append(x.detach().clone())
            return (3 * x[:, OBS] - 1 + 0.5 * x[:, 1]).unsqueeze(-1)

    agent.critic.q1 = Head()
    metrics = agent.update(tiny_batch())
    x = seen[-1]  # the actor's call: the critic's TD pass, on (s, a), came first
    q = 3 * x[:, OBS] - 1 + 0.5 * x[:, 1]
    assert (x[:, OBS:].abs() <= 1).all()  # a0_hat is clipped to the action box
    assert not torch.allclose(x[:, OBS:], tiny_batch()["act"])  # the policy's actions, not the data's
    assert metrics["q_loss"] == pytest.approx(float(-q.mean() / q.abs().mean()), rel=1e-5)
    assert metrics["q_pi"] == pytest.approx(float(q.mean()), rel=1e-5)  # logged: the critic's value there


def test_ema_copies_before_its_start_then_averages_every_few_steps():
    torch.manual_seed(0)
    cfg = EDPConfig(hidden=16, sample_steps=2, ema_every=2, ema_start=4, ema_decay=0.75, lr=1e-2)
    agent = EDP(OBS, ACT, cfg)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    for _ in range(8):
        before = flat(agent.actor_ema)
        agent.update(tiny_batch(seed=agent.step))
        step, ema, actor = agent.step, flat(agent.actor_ema), flat(agent.actor)
        if step % 2:
            assert torch.equal(ema, before)  # only every ema_every steps
        elif step < 4:
            assert torch.equal(ema, actor)  # before the start: a copy of the actor
        else:
            assert torch.allclose(ema, 0.75 * before + 0.25 * actor, atol=1e-6)


def test_cdp_logs_what_its_term_did_each_update():
    from cdp.contraction import ContractionConfig

    torch.manual_seed(0)
    agent = EDP(OBS, ACT, EDPConfig(hidden=16, sample_steps=2, contraction=ContractionConfig(t_max=1.0)))
    m = agent.update(tiny_batch())
    assert m["contraction_rows"] == 6 and 0 <= m["contraction_active"] <= 1  # t_max = 1: every row
    plain = EDP(OBS, ACT, EDPConfig(hidden=16, sample_steps=2)).update(tiny_batch())
    assert not any(k.startswith("contraction_") for k in plain)


def test_official_preset_data_transform_by_hand():
    from cdp.rl.trainer import DataTransform, TrainConfig

    ep = lambda r, o: {"observations": np.full((3, 2), o, dtype=float), "actions": np.zeros((2, 1)),  # noqa: E731
                       "rewards": np.array([r, r]), "terminations": np.zeros(2), "truncations": np.array([0, 1])}
    full = Transitions.from_episodes([ep(1.0, 0.0), ep(3.0, 2.0), ep(2.0, 4.0)])  # returns 2, 6, 4
    tf = DataTransform.for_run(TrainConfig(algo="cdp", dataset="d", preset="official"), full)
    assert tf.reward_factor == pytest.approx(1000 / (6 - 2))
    assert np.allclose(tf.obs_mean, 2.0) and np.allclose(tf.obs_std, np.sqrt(8 / 3), atol=1e-5)
    out = tf.data(full)
    assert np.allclose(out.rewards, full.rewards * 250) and np.allclose(out.observations[:2], -2 / np.sqrt(8 / 3), atol=1e-5)
    assert DataTransform.for_run(TrainConfig(algo="cdp", dataset="d"), full).data(full) is full  # the default: untouched
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig(algo="cdp", dataset="d", preset="paper")
    with pytest.raises(ValueError, match="not bc's"):
        TrainConfig(algo="bc", dataset="d", preset="official")


def test_official_edp_schedules_and_q_term():
    torch.manual_seed(0)
    cfg = EDPConfig.official(steps=20, hidden=16, sample_steps=2, ema_start=6, lr=1e-2)
    agent = EDP(OBS, ACT, cfg)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    ema0, orders = flat(agent.actor_ema), set()
    seen = []

    class Record(nn.Module):  # wraps a head, recording what the actor's Q term computed
        def __init__(self, head, name):
            super().__init__()
            self.head, self.name = head, name

        def forward(self, x):
            out = self.head(x)
            seen.append((self.name, out.detach().squeeze(-1)))
            return out

    agent.critic.q1, agent.critic.q2 = Record(agent.critic.q1, 1), Record(agent.critic.q2, 2)
    for k in range(1, 13):
        target_before, seen[:] = flat(agent.critic_target), []
        m = agent.update(tiny_batch(seed=k))
        # lr: cosine from 1e-2 to 0 over 20 updates
        assert agent.actor_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 + np.cos(np.pi * k / 20)) / 2)
        # critic target: 0.995 of the way to the critic every 5 updates, untouched otherwise; the
        # official loop counts updates from 0 (n = k - 1) and averages where n % 5 == 0: k = 1, 6, 11
        tgt, crit = flat(agent.critic_target), flat(agent.critic)
        assert torch.allclose(tgt, 0.005 * target_before + 0.995 * crit, atol=1e-6) if k % 5 == 1 else torch.equal(tgt, target_before)
        # EMA: held at its initial weights until its first update at n >= 6 with n % 5 == 0 (n = 10: k = 11)
        assert torch.equal(flat(agent.actor_ema), ema0) == (k < 11)
        # Q term: -Q_i / mean|Q_j|, (i, j) = (1, 2) or (2, 1) (the actor pass evaluates both heads)
        q = dict(seen[-2:])
        assert set(q) == {1, 2}
        by_order = {i: float(-q[i].mean() / q[3 - i].abs().mean()) for i in (1, 2)}
        lead = [i for i, v in by_order.items() if float(m["q_loss"]) == pytest.approx(v, rel=1e-5)]
        assert len(lead) == 1
        orders.add(lead[0])
    assert orders == {1, 2}  # either twin leads, by chance


@pytest.mark.parametrize("q_draw, q_clip", [("shared", True), ("separate", False), ("separate", True)])
def test_the_q_terms_action_comes_from_its_draw_clipped_or_raw(q_draw, q_clip):
    """EDP's one call (the denoising loss's a0_hat, clamped to the box) against the official runs'
    own draw and call, raw: the critic sees exactly to_x0(actor(a_t', t', s)) at the draw handed in."""
    from cdp.diffusion import to_x0

    torch.manual_seed(0)
    agent = EDP(OBS, ACT, EDPConfig(hidden=16, q_draw=q_draw, q_clip=q_clip))
    with torch.no_grad():  # a network whose clean-action guesses leave the box
        for p in agent.actor.parameters():
            p.mul_(8.0)
    seen, calls = [], []
    agent.critic.q1 = _Spy(agent.critic.q1, seen)
    real = agent.actor.forward
    agent.actor.forward = lambda a_t, t, s: calls.append((a_t, t)) or real(a_t, t, s)
    batch = tiny_batch(seed=1)
    t, noise = torch.full((6,), 0.5), torch.randn(6, ACT)
    qt, qnoise = torch.full((6,), 0.9), torch.randn(6, ACT)
    agent.actor_loss(batch, t=t, noise=noise, q_draw=(qt, qnoise))
    sched = agent.cfg.schedule
    at, qa_t = sched.q_sample(batch["act"], t, noise), sched.q_sample(batch["act"], qt, qnoise)
    with torch.no_grad():
        if q_draw == "shared":
            assert len(calls) == 1
            want = to_x0(real(at, t, batch["obs"]), at, t, sched, "x0")
        else:  # a second call, at the Q term's own draw
            assert len(calls) == 2 and torch.equal(calls[1][0], qa_t) and torch.equal(calls[1][1], qt)
            want = to_x0(real(qa_t, qt, batch["obs"]), qa_t, qt, sched, "x0")
    assert want.abs().max() > 1.5  # the test would not tell clipped from raw otherwise
    want = want.clamp(-1, 1) if q_clip else want
    assert torch.allclose(seen[-1][:, OBS:], want, atol=1e-6)


class _Spy(nn.Module):
    def __init__(self, head, seen):
        super().__init__()
        self.head, self.seen = head, seen

    def forward(self, x):
        self.seen.append(x.detach())
        return self.head(x)


def test_cdp_takes_the_exact_eigenvalue_on_kitchen_size_actions():
    """CDP's actor term on 9-dim actions (FrankaKitchen) is the exact largest eigenvalue of the
    windowed rows' symmetric Jacobian, as the official runs compute it; ``exact_max_dim=8`` (the
    earlier default, Lanczos 4 above 8 numbers) is a named variant with its own run name."""
    from cdp.contraction import jacobian
    from cdp.rl.trainer import TrainConfig, make_agent

    cfg = TrainConfig(algo="cdp", dataset="kitchen.hdf5", gamma=1.0, margin=None)
    assert cfg.run_name() == "cdp-f1-g1-mNone-s0"
    assert TrainConfig(algo="cdp", dataset="kitchen.hdf5", exact_max_dim=8).run_name() == "cdp-f1-x8-s0"
    torch.manual_seed(0)
    agent = make_agent(cfg, 4, 9)
    actor = agent.actor.double()
    g = torch.Generator().manual_seed(1)
    B, sch = 6, agent.cfg.schedule
    x0, s = torch.rand(B, 9, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(B, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.02, 0.04, 0.1, 0.06, 0.5, 0.9], dtype=torch.float64)  # 4 rows in the window t <= 0.1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = agent.reg.loss(actor, x0, s, t=t, noise=noise)
    a_t, win = sch.q_sample(x0, t, noise), t <= 0.1
    f, h = sch.sampling_ode_coefficients(t, agent.cfg.prediction)
    J = jacobian(lambda a: actor(a, t, s), a_t, create_graph=False)
    lam = f / h.abs() + torch.linalg.eigvalsh(torch.sign(h)[:, None, None] * (J + J.transpose(1, 2)) / 2)[:, -1]
    torch.testing.assert_close(out.contraction.detach(), lam[win].mean(), rtol=1e-6, atol=1e-9)


def test_the_q_weight_is_the_tasks_published_one_and_weighs_the_actors_q_term():
    """eta: 0.005 on kitchen, 1 on hopper / walker2d (the official task files); the actor's loss
    is the denoising loss + eta * the Q term; an explicit other weight is named in the run."""
    from cdp.rl.trainer import TrainConfig, make_agent

    kitchen, walker = "cdp/kitchen/complete-v0", "cdp/walker2d/medium-replay-sac-s1-v0"
    for dataset, eta in ((kitchen, 0.005), ("D4RL/kitchen/mixed-v2", 0.005), (walker, 1.0),
                         ("data/hopper-medium-replay-v2.hdf5", 1.0)):
        for algo in ("edp", "cdp", "dql"):
            cfg = TrainConfig(algo=algo, dataset=dataset)
            assert cfg.eta == eta and cfg.run_name() == f"{algo}-f1-s0"  # the published weight: no suffix
        assert TrainConfig(algo="bc", dataset=dataset).eta is None  # no Q term
    assert TrainConfig(algo="edp", dataset=kitchen, eta=1.0).run_name() == "edp-f1-eta1-s0"
    assert TrainConfig(algo="cdp", dataset=walker, eta=0.5, gamma=1.0).run_name() == "cdp-f1-eta0.5-g1-s0"
    with pytest.raises(ValueError, match="eta"):
        TrainConfig(algo="edp", dataset=kitchen, eta=-1.0)
    for dataset, eta in ((kitchen, 0.005), (walker, 1.0)):
        torch.manual_seed(0)
        agent = make_agent(TrainConfig(algo="edp", dataset=dataset), OBS, ACT)
        m = agent.update(tiny_batch())
        assert agent.cfg.eta == eta and float(m["q_loss"]) != 0
        assert float(m["actor_loss"]) == pytest.approx(float(m["denoise_loss"] + eta * m["q_loss"]), rel=1e-6)


def test_official_preset_takes_the_tasks_selection_temperature_and_leaves_kitchens_rewards():
    from cdp.rl.tasks import OTHER, task_settings
    from cdp.rl.trainer import DataTransform, TrainConfig, make_agent

    # the task files: hopper 300, walker2d-medium-replay 100 (walker2d-medium 300), kitchen 5
    for dataset, temp in (("cdp/hopper/medium-replay-v0", 300.0), ("cdp/walker2d/medium-replay-sac-s1-v0", 100.0),
                          ("walker2d_medium_v2.hdf5", 300.0), ("cdp/kitchen/complete-v0", 5.0)):
        agent = make_agent(TrainConfig(algo="cdp", dataset=dataset, preset="official", steps=10), OBS, ACT)
        assert agent.cfg.temperature == temp
    assert agent.cfg.eta == 0.005 and agent.cfg.init_noise_scale == 0.5  # the kitchen one, with the preset's rest
    # a folder named like a task does not make a file that task's: the file's own name decides
    assert task_settings("/data/kitchen/halfcheetah-medium-v2.hdf5") == OTHER
    ep = lambda r: {"observations": np.full((3, 2), r, dtype=float), "actions": np.zeros((2, 1)),  # noqa: E731
                    "rewards": np.array([r, r]), "terminations": np.zeros(2), "truncations": np.array([0, 1])}
    full = Transitions.from_episodes([ep(1.0), ep(3.0)])  # returns 2 and 6
    kitchen = DataTransform.for_run(TrainConfig(algo="cdp", dataset="cdp/kitchen/complete-v0", preset="official"), full)
    hopper = DataTransform.for_run(TrainConfig(algo="cdp", dataset="cdp/hopper/medium-replay-v0", preset="official"), full)
    assert kitchen.reward_factor == 1.0 and hopper.reward_factor == pytest.approx(1000 / 4)
    assert np.allclose(kitchen.obs_mean, 2.0)  # observations normalised on both


def test_a_run_saved_before_the_q_weight_resumes_only_at_the_weight_it_trained_with(tmp_path):
    """A stored config without ``eta`` trained at 1: on kitchen it is the "-eta1" run, and the
    published-weight config (0.005) refuses its folder; on walker2d (published 1) it matches."""
    import json
    from dataclasses import asdict

    from cdp.rl.trainer import TrainConfig, claim_run

    data = Transitions.from_episodes([{"observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)), "rewards": np.ones(2),
                                       "terminations": np.zeros(2), "truncations": np.array([0, 1])}])
    for dataset, published in (("cdp/kitchen/complete-v0", 0.005), ("cdp/walker2d/medium-replay-sac-s1-v0", 1.0)):
        for algo in ("edp", "bc"):
            old = {k: v for k, v in asdict(TrainConfig(algo=algo, dataset=dataset)).items() if k != "eta"}
            out = tmp_path / f"{dataset.split('/')[1]}-{algo}"
            out.mkdir()
            (out / "config.json").write_text(json.dumps(old))
            (out / "checkpoint.pt").write_bytes(b"")  # a run under way: its folder stays whatever happens
            if algo == "edp" and published != 1.0:
                with pytest.raises(ValueError, match=r"another config \(differs in \['eta'\]\)"):
                    with claim_run(TrainConfig(algo=algo, dataset=dataset), out, data):
                        pass
            with claim_run(TrainConfig(algo=algo, dataset=dataset, eta=1.0 if algo == "edp" else None), out, data):
                pass  # the weight it trained with: resumes
            assert json.loads((out / "config.json").read_text())["eta"] == (1.0 if algo == "edp" else None)
    # a stored config the class cannot read (a key it no longer has) is compared as written: the key is named
    (out / "config.json").write_text(json.dumps({**asdict(TrainConfig(algo="bc", dataset=dataset)), "lr_decay": True}))
    with pytest.raises(ValueError, match=r"another config \(differs in \['lr_decay'\]\)"):
        with claim_run(TrainConfig(algo="bc", dataset=dataset), out, data):
            pass


def test_gradient_clipping_bounds_each_update_and_is_named_in_the_run():
    """grad_clip (EDP's own code: 4 on hopper / walker2d medium-replay): each network's gradient is
    cut to the bound before its step, where without it the same update's is larger; the run name
    says so; a bound for an algorithm with no Q-term networks, or one not above 0, is refused."""
    from cdp.rl.trainer import TrainConfig, make_agent

    walker = "cdp/walker2d/medium-replay-sac-s1-v0"

    def grad_norms(clip):
        torch.manual_seed(0)
        agent = make_agent(TrainConfig(algo="cdp", dataset=walker, grad_clip=clip), OBS, ACT)
        seen = {}
        for name, opt in (("critic", agent.critic_opt), ("actor", agent.actor_opt)):
            def record(o, args, kwargs, name=name):  # the norm the optimiser steps with
                grads = [p.grad for g in o.param_groups for p in g["params"] if p.grad is not None]
                seen[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
            opt.register_step_pre_hook(record)
        agent.update(tiny_batch())
        return seen

    free, cut = grad_norms(None), grad_norms(1e-3)
    for name in ("critic", "actor"):
        assert free[name] > 1e-2 and cut[name] == pytest.approx(1e-3, rel=1e-4)
    assert TrainConfig(algo="edp", dataset=walker, grad_clip=4.0).run_name() == "edp-f1-clip4-s0"
    assert TrainConfig(algo="edp", dataset=walker).run_name() == "edp-f1-s0"  # none: the published runs'
    for algo, clip in (("bc", 4.0), ("idql", 4.0), ("edp", 0.0), ("cdp", float("inf"))):
        with pytest.raises(ValueError, match="grad_clip"):
            TrainConfig(algo=algo, dataset=walker, grad_clip=clip)
