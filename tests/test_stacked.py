"""Seeds stacked into one vectorised model (cdp.rl.stacked) update as the same seeds apart."""

import csv
import dataclasses

import pytest
import torch

from cdp.contraction import ContractionConfig
from cdp.rl.bc import BC, BCConfig
from cdp.rl.edp import EDP, EDPConfig
from cdp.rl.iql import IDQL, IDQLConfig
from cdp.rl.stacked import StackedBC, StackedEDP, StackedIDQL, clip_per_seed_, stack, stack_supported


def agents(n: int, cfg, obs: int = 11, act: int = 3) -> list:
    """``n`` fresh agents of ``cfg``'s algorithm (BC, EDP / CDP / DQL, IDQL), seeds 0 ... n-1."""
    algo = {BCConfig: BC, EDPConfig: EDP, IDQLConfig: IDQL}[type(cfg)]
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        agent = algo(obs, act, cfg)
        agent.own_generators()
        out.append(agent)
    return out


def batches(n: int, g: torch.Generator, B: int = 32, obs: int = 11, act: int = 3) -> list[dict]:
    return [{"obs": torch.randn(B, obs, generator=g), "act": torch.rand(B, act, generator=g) * 2 - 1,
             "rew": torch.randn(B, generator=g), "next_obs": torch.randn(B, obs, generator=g),
             "done": (torch.rand(B, generator=g) < 0.2).float()} for _ in range(n)]


# the EMA and the critic target move from the second step on; margin 100 puts every windowed row
# above the hinge's floor, so the term's gradient acts (at the default margin a fresh network's
# rows sit below it and the term is a constant)
SCHEDULE = dict(ema_start=2, ema_every=1, target_every=2)
CASES = {
    "edp-official": EDPConfig.official(100, **SCHEDULE),
    "cdp-official": EDPConfig.official(100, contraction=ContractionConfig(t_max=0.1, window="official", margin=100.0,
                                                                        products="native"), **SCHEDULE),
    "cdp-every-t": EDPConfig(contraction=ContractionConfig(margin=100.0, products="native"), **SCHEDULE),
    # DQL: its reverse chain (DDPM, 5 steps) draws at every step, for the critic target and the actor
    "dql": EDPConfig.dql(**SCHEDULE),
    "edp-iql-critic": EDPConfig(critic="iql", **SCHEDULE),
    "bc": BCConfig(hidden=32),
    "idql": IDQLConfig(hidden=64),
    "idql-with-the-term": IDQLConfig(hidden=64, contraction=ContractionConfig(margin=100.0, products="native")),
    # a norm small enough that every seed's critic and actor gradients are clipped (checked below)
    "cdp-clipped": EDPConfig(grad_clip=0.05, contraction=ContractionConfig(margin=100.0, products="native"),
                             **SCHEDULE),
}


@pytest.mark.parametrize("case", CASES)
def test_stacked_seeds_update_as_the_seeds_apart(case):
    cfg, n, steps = CASES[case], 3, 5
    apart, together = agents(n, cfg), agents(n, cfg)
    stacked = stack(together)
    assert type(stacked) is {BC: StackedBC, EDP: StackedEDP, IDQL: StackedIDQL}[type(apart[0])]
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        bs = batches(n, g)
        want = [a.update(b) for a, b in zip(apart, bs)]
        got = stacked.update(bs)
        for w, o in zip(want, got):
            assert list(w) == list(o)  # the same metrics, in the same order
            for k in w:
                assert torch.allclose(w[k], o[k], rtol=1e-4, atol=1e-5), (k, w[k], o[k])
    first = next(iter(want[0]))
    assert not torch.allclose(want[0][first], want[1][first])  # the seeds really differ
    if getattr(cfg, "contraction", None) is not None:
        if "contraction_active" in want[0]:
            assert float(want[0]["contraction_active"]) > 0  # the term's gradient acted
        assert float(want[0]["contraction"]) != 0
    if getattr(cfg, "grad_clip", None) is not None:  # the clip acted: unclipped seeds end elsewhere
        free = agents(1, dataclasses.replace(cfg, grad_clip=None))[0]
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            free.update(batches(n, g)[0])
        assert not torch.allclose(free.actor.state_dict()["mid.0.weight"], apart[0].actor.state_dict()["mid.0.weight"])
    for a, b in zip(apart, together):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["step"] == sb["step"] == steps
        opts = [k for k in sa if k != "step" and "param_groups" in sa[k]]
        for part in sa.keys() - {"step", *opts}:  # every network, targets and averages included
            for k in sa[part]:
                assert torch.allclose(sa[part][k], sb[part][k], atol=2e-5), (part, k)
        for opt in opts:
            assert sa[opt]["param_groups"][0]["lr"] == sb[opt]["param_groups"][0]["lr"]
            for i, st in sa[opt]["state"].items():
                assert float(st["step"]) == float(sb[opt]["state"][i]["step"]) == steps
                assert torch.allclose(st["exp_avg"], sb[opt]["state"][i]["exp_avg"], atol=1e-6)
                assert torch.allclose(st["exp_avg_sq"], sb[opt]["state"][i]["exp_avg_sq"], atol=1e-8)
        assert torch.equal(a.generator.get_state(), b.generator.get_state())  # the same draws, as many


def test_a_stacked_agent_acts_on_its_own_weights_and_a_checkpoint_holds_its_own_numbers(tmp_path):
    from cdp.runlog import load_checkpoint, save_checkpoint

    group = agents(3, EDPConfig(n_candidates=4))
    StackedEDP(group).update(batches(3, torch.Generator().manual_seed(1)))
    w = group[1].actor.state_dict()["mid.0.weight"]
    assert w.untyped_storage().nbytes() == 3 * w.numel() * w.element_size()  # a view into the stack
    save_checkpoint(tmp_path / "c.pt", {"agent": group[1].state_dict()})
    loaded = load_checkpoint(tmp_path / "c.pt")["agent"]
    lw = loaded["actor"]["mid.0.weight"]
    assert torch.equal(lw, w) and lw.untyped_storage().nbytes() == w.numel() * w.element_size()
    fresh = EDP(11, 3, EDPConfig(n_candidates=4))
    fresh.load_state_dict(loaded)  # a lone agent resumes from it
    assert torch.equal(fresh.actor.state_dict()["mid.0.weight"], w)


def test_clip_per_seed_is_torchs_clip_for_each_seed():
    g = torch.Generator().manual_seed(0)
    stacks = [torch.zeros(3, 4, 5, requires_grad=True), torch.zeros(3, 5, requires_grad=True)]
    for p in stacks:
        p.grad = torch.randn(p.shape, generator=g)
    stacks[0].grad[1] *= 1e-3  # seed 1 below the norm: left as it is
    stacks[1].grad[1] *= 1e-3
    want = []
    for i in range(3):  # torch's clip on each seed's own parameters
        own = [torch.zeros(p.shape[1:], requires_grad=True) for p in stacks]
        for o, p in zip(own, stacks):
            o.grad = p.grad[i].clone()
        norm = torch.nn.utils.clip_grad_norm_(own, 1.0)
        want.append((norm, [o.grad for o in own]))
    norms = clip_per_seed_(stacks, 1.0)
    for i, (norm, grads) in enumerate(want):
        assert torch.allclose(norms[i], norm)
        for p, w in zip(stacks, grads):
            assert torch.allclose(p.grad[i], w, rtol=1e-6, atol=0)
    assert norms[0] > 1 and norms[1] < 1 and torch.linalg.vector_norm(
        torch.cat([stacks[0].grad[0].flatten(), stacks[1].grad[0].flatten()])) == pytest.approx(1.0, rel=1e-5)


def test_what_cannot_be_stacked_says_why():
    assert stack_supported(agents(2, EDPConfig())) is None
    assert stack_supported(agents(2, EDPConfig.dql())) is None  # the chain's draws are made beforehand
    assert stack_supported(agents(2, EDPConfig(critic="iql"))) is None
    assert "of one algorithm" in stack_supported([*agents(1, EDPConfig()), *agents(1, IDQLConfig())])
    with pytest.raises(ValueError, match="StackedBC stacks BC, not EDP"):
        StackedBC(agents(2, EDPConfig()))
    assert stack_supported(agents(2, EDPConfig(grad_clip=4.0))) is None  # each seed clipped by its own norm
    assert "exact eigenvalue" in stack_supported(agents(2, EDPConfig(contraction=ContractionConfig(method="lanczos"))))
    at_two_steps = agents(2, EDPConfig())
    at_two_steps[1].step = 3
    assert "different steps [0, 3]" in stack_supported(at_two_steps)
    shared = agents(2, EDPConfig())
    shared[1].generator = shared[0].generator
    assert "its own generator" in stack_supported(shared)
    with pytest.raises(ValueError, match="cannot be stacked: .*configs differ"):
        StackedEDP([*agents(1, EDPConfig()), *agents(1, EDPConfig(eta=2.0))])
    on_cpu = agents(2, EDPConfig())
    where = [p.data_ptr() for p in on_cpu[0].actor.parameters()]
    with pytest.raises(ValueError, match="graphs=True needs agents on a CUDA device, not cpu"):
        StackedEDP(on_cpu, graphs=True)
    assert [p.data_ptr() for p in on_cpu[0].actor.parameters()] == where  # refused before its weights became views


def rows(path):
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["cdp", "idql", "bc"])
def test_a_stacked_ensemble_leaves_what_its_runs_leave_alone(algo, tiny_dataset, tmp_path, monkeypatch):
    import cdp.rl.stacked
    from cdp.rl.ensemble import train_ensemble
    from cdp.rl.trainer import TrainConfig, train

    stacked_steps = []

    agent_type = {"cdp": EDP, "idql": IDQL, "bc": BC}[algo]
    base = cdp.rl.stacked.STACKED[agent_type]

    class Counted(base):
        def update(self, batches):
            stacked_steps.append(self.agents[0].step)
            return super().update(batches)

    monkeypatch.setitem(cdp.rl.stacked.STACKED, agent_type, Counted)

    kw = dict(algo=algo, dataset=tiny_dataset, batch_size=32, eval_every=3, eval_episodes=2,
              checkpoint_every=3, log_every=1, fraction=0.5)
    seeds = [0, 1]
    alone = {s: tmp_path / "alone" / f"s{s}" for s in seeds}
    together = {s: tmp_path / "together" / f"s{s}" for s in seeds}
    for s in seeds:
        train(TrainConfig(seed=s, steps=6, **kw), alone[s], progress=False)
    # seed 0 first trained alone to step 3; then seed 1 catches up alone, and both stack from its
    # checkpoint and seed 1's state in memory (optimiser states stacked) to step 6
    train(TrainConfig(seed=0, steps=3, **kw), together[0], progress=False)
    sums = train_ensemble([TrainConfig(seed=s, steps=6, **kw) for s in seeds], list(together.values()), progress=False,
                          stacked=True)
    assert [x["step"] for x in sums] == [6, 6]
    assert stacked_steps == [3, 4, 5]  # seed 1 caught up alone, then steps 4 to 6 stacked
    for s in seeds:
        a, t = alone[s], together[s]
        for name in ("metrics.csv", "eval.csv"):
            ra, rt = rows(a / name), rows(t / name)
            assert [list(r) for r in ra] == [list(r) for r in rt] and len(ra) == len(rt) > 0
            for x, y in zip(ra, rt):
                for k in x:
                    if k not in ("seconds",):
                        # a standard error is a difference of returns: on another CPU's rounding it
                        # moves by what they move, so it is compared on their scale, not its own
                        scale = abs(float(x[k.removesuffix("_se") + "_mean"])) if k.endswith("_se") else 0.0
                        assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-3, abs=max(1e-4, 1e-3 * scale)), \
                            (name, k, x[k], y[k])
        wa = torch.load(a / "checkpoint.pt", weights_only=False)
        wt = torch.load(t / "checkpoint.pt", weights_only=False)
        assert wa["rng"] == wt["rng"] and torch.equal(wa["torch_rng"], wt["torch_rng"])
        policy = "policy" if algo == "bc" else "actor"
        for k, v in wa["agent"][policy].items():
            assert torch.allclose(v, wt["agent"][policy][k], atol=1e-5)
        # a seed's checkpoint holds its own numbers, not the whole stack
        assert (t / "checkpoint.pt").stat().st_size < 1.05 * (a / "checkpoint.pt").stat().st_size
