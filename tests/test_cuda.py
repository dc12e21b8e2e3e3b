"""The same maths and the same runs on a CUDA GPU (skipped where there is none; CI has none).

The CPU suite checks device-following with ``torch.device("meta")``; these run the real thing:
the eigenvalue estimate and the fused contraction loss against the CPU in float64, every RL
agent's update and action selection, an imitation policy, and a run trained on the GPU and
resumed on the CPU.
"""

import copy

import numpy as np
import pytest
import torch
from conftest import random_sym_spectrum_map

from cdp.capture import GraphedCall, GraphedUpdate, host_floats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("method,iters", [("exact", 1), ("lanczos", 10), ("power", 300)])
def test_largest_algebraic_eigenvalue_on_the_gpu(method, iters):
    from cdp.contraction import max_sym_eig

    evals = torch.cat([torch.tensor([-10.0, -7.0]), torch.linspace(-3.0, 1.0, 8)]).double()  # |-10| dominates
    A, _ = random_sym_spectrum_map(6, 10, evals)
    A = A.to(CUDA)
    got = max_sym_eig(lambda x: torch.einsum("bij,bj->bi", A, x), torch.randn(6, 10, dtype=torch.float64, device=CUDA),
                      method, iters, exact_max_dim=4, generator=torch.Generator(CUDA).manual_seed(0))
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), torch.ones(6, dtype=torch.float64), atol=1e-6 if method != "power" else 1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_fused_contraction_loss_and_its_gradient_equal_the_cpu(prediction):
    """The fused JVP pass (in-place tangent arithmetic, ``cdp.nets.mlp``) gives the CPU's value
    and parameter gradients on the GPU, for the exact (d <= 8) estimate."""
    from cdp.contraction import ContractionRegularizer
    from cdp.diffusion import VPSchedule
    from cdp.nets import MLP

    torch.manual_seed(0)
    net = MLP(3, state_dim=4, hidden=32).double()
    x0 = torch.rand(12, 3, dtype=torch.float64) * 2 - 1
    obs, noise = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    t = torch.rand(12, dtype=torch.float64) * 0.98 + 0.01
    reg = ContractionRegularizer(VPSchedule(), prediction, gamma=0.7)
    results = []
    for dev in ("cpu", "cuda"):
        n = net.to(dev)
        out = reg.loss(n, x0.to(dev), obs.to(dev), t=t.to(dev), noise=noise.to(dev))
        results.append((out.total.item(), [g.cpu() for g in torch.autograd.grad(out.total, list(n.parameters()))]))
    (lc, gc), (lg, gg) = results
    assert lg == pytest.approx(lc, rel=1e-9, abs=1e-12)
    for a, b in zip(gc, gg):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("algo", ["bc", "edp", "cdp", "dql", "idql"])
def test_agents_update_and_act_on_the_gpu(algo):
    agent = small_agent(algo)
    batch = gpu_batch(0)
    hist = [host_floats(agent.update(batch)) for _ in range(60)]
    assert all(np.isfinite(v) for h in hist for v in h.values())
    if algo == "cdp":
        assert any(h["contraction"] != 0.0 for h in hist)  # the term ran
    if algo == "bc":  # a deterministic fit of a fixed batch: its loss falls
        assert np.mean([h["bc_loss"] for h in hist[-5:]]) < 0.95 * np.mean([h["bc_loss"] for h in hist[:5]])
    a = agent.act(batch["obs"][:4])
    assert a.device.type == "cuda" and a.shape == (4, 3) and bool((a.abs() <= 1 + 1e-6).all())


def test_diffusion_policy_with_the_term_on_the_gpu():
    from cdp.contraction import ContractionConfig
    from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig

    pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=5, action_dim=2, backbone="unet", unet_dims=(8, 16),
                                                sample_steps=3, contraction=ContractionConfig(gamma=0.1, subbatch=2)))
    pol.set_stats(np.random.default_rng(0).normal(size=(50, 5)), np.random.default_rng(1).uniform(-1, 1, (50, 2)))
    pol.to(CUDA)
    obs, act = torch.randn(4, pol.config.n_obs_steps, 5, device=CUDA), torch.rand(4, pol.config.horizon, 2, device=CUDA) * 2 - 1
    loss = pol.compute_loss(obs, act)
    loss["loss"].backward()
    assert all(torch.isfinite(v).all() and v.device.type == "cuda" for v in loss.values())
    assert loss["contraction"].item() != 0.0
    chunk = pol.predict_chunk(obs)
    assert chunk.device.type == "cuda" and chunk.shape == (4, pol.config.horizon, 2)


@pytest.mark.slow
def test_a_run_trained_on_the_gpu_resumes_on_the_cpu(tiny_dataset, tmp_path):
    import json

    from cdp.cli import main

    run = tmp_path / "run"
    args = ["rl", "train", "edp", "--dataset", tiny_dataset, "--eval-every", "4", "--eval-episodes", "1", "--out", str(run)]
    assert main([*args, "--steps", "4", "--device", "cuda"]) == 0
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"
    assert main([*args, "--steps", "8", "--device", "cpu"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 8 and summary["evals"] == 2
    assert [(leg["from"], leg["to"], leg["where"].split()[0]) for leg in summary["legs"]] == [(0, 4, "cuda"), (4, 8, "cpu")]


def small_agent(algo: str):
    from cdp.contraction import ContractionConfig
    from cdp.rl.bc import BC, BCConfig
    from cdp.rl.edp import EDP, EDPConfig
    from cdp.rl.iql import IDQL, IDQLConfig

    small = dict(hidden=32, sample_steps=3, n_candidates=5)
    return {"bc": lambda: BC(11, 3, BCConfig(hidden=32), CUDA),
            "edp": lambda: EDP(11, 3, EDPConfig(**small), CUDA),
            "cdp": lambda: EDP(11, 3, EDPConfig(contraction=ContractionConfig(t_max=0.1), **small), CUDA),
            "cdp-every-t": lambda: EDP(11, 3, EDPConfig(contraction=ContractionConfig(), **small), CUDA),
            "cdp-official": lambda: EDP(11, 3, EDPConfig.official(20, contraction=ContractionConfig(t_max=0.1), **small), CUDA),
            "edp-iql": lambda: EDP(11, 3, EDPConfig(critic="iql", **small), CUDA),
            "dql": lambda: EDP(11, 3, EDPConfig.dql(hidden=32), CUDA),
            "idql": lambda: IDQL(11, 3, IDQLConfig(contraction=ContractionConfig(t_max=0.1), **small), CUDA)}[algo]()


def gpu_batch(seed: int, n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = {"obs": torch.randn(n, 11, generator=g), "act": torch.rand(n, 3, generator=g) * 2 - 1,
         "rew": torch.randn(n, generator=g), "next_obs": torch.randn(n, 11, generator=g),
         "done": (torch.rand(n, generator=g) < 0.1).float()}
    return {k: v.to(CUDA) for k, v in b.items()}


@pytest.mark.parametrize("algo", ["bc", "edp", "cdp", "cdp-every-t", "cdp-official", "edp-iql", "dql", "idql"])
def test_a_graphed_update_equals_the_eager_one(algo):
    """GraphedUpdate (3 eager warm-up steps, then one recorded graph replayed) trains as the eager
    update does from the same weights and generator states: the same losses at every step and the
    same weights after 10 steps, to float tolerance (the term's window is a mask in the graph and a
    gather eagerly: sums in another order)."""
    eager = small_agent(algo)
    graphed = copy.deepcopy(eager)
    step = GraphedUpdate(graphed)
    batches = [gpu_batch(k) for k in range(10)]
    runs = {}
    for name, fn in (("eager", eager.update), ("graphed", step)):
        torch.manual_seed(1), torch.cuda.manual_seed(1)
        runs[name] = [host_floats(fn(b)) for b in batches]
    assert step.graph is not None and graphed.step == eager.step == 10
    for me, mg in zip(runs["eager"], runs["graphed"]):
        assert me.keys() <= mg.keys()
        for k in me:
            assert mg[k] == pytest.approx(me[k], rel=1e-3, abs=1e-5), k
    if algo.startswith("cdp"):
        assert any(m["contraction"] != 0 for m in runs["graphed"][3:])  # the term ran inside the graph
    for k in eager.state_keys():
        a, b = getattr(eager, k), getattr(graphed, k)
        if isinstance(a, torch.nn.Module):
            for x, y in zip(a.parameters(), b.parameters()):
                assert torch.allclose(x, y, atol=2e-4, rtol=1e-3), k


@pytest.mark.parametrize("temperature", [None, 300.0])
def test_graphed_action_selection_draws_what_eager_selection_draws(temperature):
    from cdp.rl.edp import EDP, EDPConfig

    agent = EDP(11, 3, EDPConfig(hidden=32, n_candidates=50, temperature=temperature), CUDA)
    obs = torch.randn(6, 11, device=CUDA)
    torch.cuda.manual_seed(3)
    eager = [agent.act(obs) for _ in range(5)]
    torch.cuda.manual_seed(3)
    act = GraphedCall(agent.act)
    graphed = [act(obs) for _ in range(5)]
    assert len(act.graphs) == 1
    assert not torch.equal(eager[3], eager[4])  # fresh noise every call, in the graph too
    for e, g in zip(eager, graphed):
        assert torch.allclose(e, g, atol=1e-5)


@pytest.mark.slow
def test_a_graphed_run_resumes_eagerly_on_the_cpu(tiny_dataset, tmp_path):
    """A run trained under graphs on the GPU (its optimiser capturable, its lr a tensor) resumes
    on the CPU: the checkpoint holds a portable optimiser state."""
    import json

    from cdp.cli import main

    run = tmp_path / "run"
    args = ["rl", "train", "cdp", "--dataset", tiny_dataset, "--eval-every", "6", "--eval-episodes", "2",
            "--out", str(run)]
    assert main([*args, "--steps", "6", "--device", "cuda"]) == 0
    assert main([*args, "--steps", "9", "--device", "cpu"]) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 9


@pytest.mark.slow
def test_an_ensemble_on_a_gpu_stacks_its_seeds_and_refuses_turns(tiny_dataset, tmp_path):
    from cdp.rl.ensemble import train_ensemble
    from cdp.rl.trainer import TrainConfig

    cfgs = [TrainConfig(algo="edp", dataset=tiny_dataset, steps=2, device="cuda", seed=s, eval_every=2,
                        eval_episodes=1, batch_size=32) for s in (0, 1)]
    with pytest.raises(ValueError, match="seeds taking turns run on the CPU only"):
        train_ensemble(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False, stacked=False)
    assert not (tmp_path / "a").exists()  # refused before any folder was made
    sums = train_ensemble(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)  # stacked by default here
    assert [s["step"] for s in sums] == [2, 2]


@pytest.mark.parametrize("algo", ["cdp-official", "dql-clipped", "idql"])
@pytest.mark.parametrize("graphs", [False, True])
def test_stacked_seeds_on_the_gpu_update_as_the_seeds_apart(graphs, algo):
    """Three seeds stacked train as the seeds apart, eagerly and with ``graphs=True`` (the whole
    N-seed update recorded once as a CUDA graph after 3 eager warm-up steps, then replayed): the
    same losses every step (so each seed's generator advances on every replay, DQL's draws at
    every sampler step included), the same weights, and the agents' own optimiser states (what
    their checkpoints hold) still views of the stacked ones."""
    from cdp.contraction import ContractionConfig
    from cdp.rl.edp import EDP, EDPConfig
    from cdp.rl.iql import IDQL, IDQLConfig
    from cdp.rl.stacked import stack

    make = {
        "cdp-official": lambda: EDP(11, 3, EDPConfig.official(100, contraction=ContractionConfig(
            t_max=0.1, window="official", margin=100.0, products="native"), ema_start=2, ema_every=1), CUDA),
        "dql-clipped": lambda: EDP(11, 3, EDPConfig.dql(grad_clip=0.05, ema_start=2, ema_every=1), CUDA),
        "idql": lambda: IDQL(11, 3, IDQLConfig(hidden=64), CUDA),
    }[algo]

    def agents():
        out = []
        for seed in range(3):
            torch.manual_seed(seed)
            torch.cuda.manual_seed(seed)
            a = make()
            a.own_generators()
            out.append(a)
        return out

    apart, together = agents(), agents()
    stacked = stack(together, graphs=graphs)
    g = torch.Generator().manual_seed(0)
    steps = 8
    for step in range(steps):
        bs = [{"obs": torch.randn(64, 11, generator=g), "act": torch.rand(64, 3, generator=g) * 2 - 1,
               "rew": torch.randn(64, generator=g), "next_obs": torch.randn(64, 11, generator=g),
               "done": torch.zeros(64)} for _ in range(3)]
        bs = [{k: v.to(CUDA) for k, v in b.items()} for b in bs]
        want, got = [a.update(b) for a, b in zip(apart, bs)], stacked.update(bs)
        for w, o in zip(want, got):
            for k in w:
                assert torch.allclose(w[k], o[k], rtol=1e-3, atol=1e-4), (step, k)
    assert (stacked._graphed is not None and stacked._graphed.graph is not None) == graphs
    for a, b in zip(apart, together):
        assert a.step == b.step == steps
        for k, v in a.actor.state_dict().items():
            assert torch.allclose(v, b.actor.state_dict()[k], atol=1e-4), k
        for st in b.state_dict()["actor_opt"]["state"].values():
            assert float(st["step"]) == steps
