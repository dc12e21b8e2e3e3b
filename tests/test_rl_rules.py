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
    agent.sample_actions = lambda obs, ema=True: a2  # the policy's next actions, fixed
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
