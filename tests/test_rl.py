"""Offline-RL algorithms and the trainer on a tiny dataset made here (real MuJoCo rollouts)."""

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("minari")
pytest.importorskip("mujoco")

from cdp.data import DatasetError  # noqa: E402
from cdp.rl.bc import BC, BCConfig  # noqa: E402
from cdp.rl.edp import EDP, EDPConfig  # noqa: E402
from cdp.rl.iql import IDQL, IDQLConfig, expectile_loss  # noqa: E402
from cdp.rl.trainer import TrainConfig, train  # noqa: E402


def batch_from(ds_id, n=256, seed=0):
    from cdp.data import load_minari

    tr = load_minari(ds_id)
    idx = np.random.default_rng(seed).integers(0, len(tr), n)
    return {"obs": torch.as_tensor(tr.observations[idx]), "act": torch.as_tensor(tr.actions[idx]),
            "rew": torch.as_tensor(tr.rewards[idx]), "next_obs": torch.as_tensor(tr.next_observations[idx]),
            "done": torch.as_tensor(tr.terminals[idx].astype(np.float32))}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "edp", "edp-iql", "dql", "idql"])
def test_losses_fall(tiny_dataset, algo):
    torch.manual_seed(0)
    b = batch_from(tiny_dataset)
    if algo == "bc":
        agent, key = BC(11, 3, BCConfig(lr=1e-3)), "bc_loss"
    elif algo == "edp":
        agent, key = EDP(11, 3, EDPConfig(hidden=64, sample_steps=3, lr=1e-3)), "denoise_loss"
    elif algo == "edp-iql":
        agent, key = EDP(11, 3, EDPConfig(critic="iql", hidden=64, sample_steps=3, lr=1e-3)), "denoise_loss"
    elif algo == "dql":
        agent, key = EDP(11, 3, EDPConfig.dql(hidden=64, lr=1e-3)), "denoise_loss"
    else:
        agent, key = IDQL(11, 3, IDQLConfig(hidden=64, sample_steps=3, lr=1e-3, n_candidates=8)), "denoise_loss"
    hist = [agent.update(b)[key] for _ in range(150)]
    clone = type(agent)(11, 3, agent.cfg)  # checkpoint round trip
    clone.load_state_dict(agent.state_dict())
    assert clone.step == agent.step
    # random-policy actions: much of the x0 error is irreducible, so the bar is a clear fall, not a collapse
    assert np.mean(hist[-20:]) < 0.8 * np.mean(hist[:5])
    assert agent.act(b["obs"][:2]).shape == (2, 3)


@pytest.mark.parametrize("algo", ["bc", "edp", "edp-iql", "cdp", "cdp-every-t", "dql", "idql"])
def test_agents_make_every_tensor_on_their_inputs_device(algo):
    """Inside ``with torch.device("meta")`` a tensor made without an explicit device lands on
    meta and the first op mixing it with the CPU batch fails, so passing means every tensor an
    update and an action selection make follows the data's device (what a CUDA run needs)."""
    from cdp.contraction import ContractionConfig

    small = dict(hidden=16, sample_steps=2, n_candidates=3)
    agent = {"bc": lambda: BC(11, 3, BCConfig(hidden=16)),
             "edp": lambda: EDP(11, 3, EDPConfig(**small)),
             "edp-iql": lambda: EDP(11, 3, EDPConfig(critic="iql", **small)),
             "cdp": lambda: EDP(11, 3, EDPConfig(contraction=ContractionConfig(gamma=0.1, t_max=0.5), **small)),
             "cdp-every-t": lambda: EDP(11, 3, EDPConfig(contraction=ContractionConfig(gamma=0.1), **small)),
             "dql": lambda: EDP(11, 3, EDPConfig.dql(hidden=16)),
             "idql": lambda: IDQL(11, 3, IDQLConfig(hidden=16, sample_steps=2, n_candidates=3))}[algo]()
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(8, 11, generator=g), "act": torch.rand(8, 3, generator=g) * 2 - 1,
             "rew": torch.randn(8, generator=g), "next_obs": torch.randn(8, 11, generator=g), "done": torch.zeros(8)}
    agent.update(batch)  # the optimisers' state exists before the check
    with torch.device("meta"):
        metrics = agent.update(batch)
        a = agent.act(batch["obs"][:2])
    assert all(np.isfinite(v) for v in metrics.values()) and a.device.type == "cpu" and a.shape == (2, 3)
    assert agent.device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_clear_line(tiny_dataset, tmp_path, capsys):
    from cdp.cli import main

    run = tmp_path / "gpu"
    assert main(["rl", "train", "bc", "--dataset", tiny_dataset, "--steps", "3", "--device", "cuda", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cdp: error: device 'cuda' is not available here (torch {torch.__version__}, 0 CUDA devices); use cpu or auto"]
    assert not run.exists()


@pytest.mark.slow
def test_trainer_writes_a_run_and_resumes(tiny_dataset, tmp_path, monkeypatch):
    import cdp.rl.trainer as T

    monkeypatch.setattr(T, "make_agent", lambda c, o, a, device="cpu": EDP(o, a, EDPConfig(  # a small CDP agent
        hidden=32, sample_steps=2, n_candidates=4, contraction=T.ContractionConfig(gamma=c.gamma, t_max=c.t_max)), device))
    out = tmp_path / "run"
    cfg = dict(algo="cdp", dataset=tiny_dataset, batch_size=32, eval_every=3, eval_episodes=1, checkpoint_every=3,
               log_every=2)
    summary = train(TrainConfig(steps=6, **cfg), out, progress=False)
    assert summary["evals"] == 2 and summary["metric"] == "d4rl_score_mean" and summary["score_reference"] == "D4RL hopper"
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "eval.csv", "checkpoint.pt", "summary.json",
                                                "curve.png", "tb"}
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == [2, 4, 6]
    assert json.loads((out / "config.json").read_text())["gamma"] == 0.1
    with pytest.raises(ValueError, match="another config"):
        train(TrainConfig(steps=6, **{**cfg, "seed": 3}), out, progress=False)
    with (out / "metrics.csv").open("a") as fh:  # as if it crashed after logging step 8, before a checkpoint
        fh.write("8" + ",0" * (len((out / "metrics.csv").read_text().splitlines()[0].split(",")) - 1) + "\n")
    train(TrainConfig(steps=9, **cfg), out, progress=False)  # resume with a larger budget: from step 6 on
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == [2, 4, 6, 8]
    assert [int(r["step"]) for r in csv.DictReader((out / "eval.csv").open())] == [3, 6, 9]
    rec = json.loads(T.record(out, tmp_path / "results").read_text())
    assert rec["config"]["algo"] == "cdp" and len(rec["eval"]) == 3 and rec["summary"]["evals"] == 3
    assert [(leg["from"], leg["to"], leg["where"].split()[0]) for leg in rec["summary"]["legs"]] == [(0, 6, "cpu"), (6, 9, "cpu")]
    res = T.evaluate_run(out, episodes=1)
    assert res["step"] == 9 and res["score_reference"] == "D4RL hopper" and np.isfinite(res["d4rl_score_mean"])
    assert res["selection"] == {"init_noise_scale": 1.0, "temperature": None, "n_candidates": 4}  # the run's own
    seen = []
    real_evaluate = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda agent, *a, **k: seen.append(agent.cfg) or real_evaluate(agent, *a, **k))
    res = T.evaluate_run(out, episodes=1, selection={"init_noise_scale": 0.5, "temperature": 300.0})
    assert (seen[0].init_noise_scale, seen[0].temperature, seen[0].n_candidates) == (0.5, 300.0, 4)  # what acted
    assert res["selection"] == {"init_noise_scale": 0.5, "temperature": 300.0, "n_candidates": 4}
    with pytest.raises(ValueError, match="unknown action-selection settings \\['steps'\\]"):
        T.evaluate_run(out, episodes=1, selection={"steps": 3})
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        T.evaluate_run(tmp_path)


@pytest.mark.slow
def test_official_preset_trains_evaluates_and_resumes(tiny_dataset, tmp_path):
    import cdp.rl.trainer as T

    out = tmp_path / "run"
    cfg = dict(algo="cdp", dataset=tiny_dataset, preset="official", batch_size=32, eval_every=4, eval_episodes=1,
               checkpoint_every=2, log_every=2)
    assert train(TrainConfig(steps=4, **cfg), out, progress=False)["evals"] == 1
    assert json.loads((out / "config.json").read_text())["preset"] == "official"
    assert TrainConfig(steps=4, **cfg).run_name() == "cdp-f1-official-s0"
    assert train(TrainConfig(steps=6, **cfg), out, progress=False)["step"] == 6  # resumes with a larger budget
    assert np.isfinite(T.evaluate_run(out, episodes=1)["return_mean"])  # evaluation applies the same transform


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    update = BC.update

    def update_nan_at_5(self, batch):
        out = update(self, batch)
        return {**out, "loss": torch.tensor(float("nan"))} if self.step == 5 else out

    monkeypatch.setattr(BC, "update", update_nan_at_5)
    out = tmp_path / "run"
    cfg = TrainConfig(algo="bc", dataset=tiny_dataset, steps=9, batch_size=16, eval_every=9, eval_episodes=1,
                      checkpoint_every=3, log_every=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5 \(loss=nan\); last good checkpoint kept at .*checkpoint.pt"):
        train(cfg, out, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=False)["agent"]
    assert state["step"] == 3 and not (out / "summary.json").exists()
    monkeypatch.setattr(BC, "update", update)  # the fault gone, the run resumes from step 3
    assert train(cfg, out, progress=False)["step"] == 9
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == list(range(1, 10))


def test_trainer_bad_input(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm"):
        TrainConfig(algo="cql", dataset=tiny_dataset)
    with pytest.raises(ValueError, match="do not match"):
        train(TrainConfig(algo="bc", dataset=tiny_dataset, env_id="Walker2d-v5", steps=1), tmp_path / "r", progress=False)
    with pytest.raises(DatasetError, match="not in the local store"):
        train(TrainConfig(algo="bc", dataset="cdp-test/none-v0", steps=1), tmp_path / "r2", progress=False)


def test_cli_train_on_a_folder_another_process_trains_is_one_clear_line(tiny_dataset, tmp_path, capsys):
    from cdp.cli import main
    from cdp.runlog import claim_run

    run = tmp_path / "busy"
    with claim_run(run):
        assert main(["rl", "train", "bc", "--dataset", tiny_dataset, "--steps", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cdp: error: ") and "is being trained by pid" in err[0]
    assert not (run / "config.json").exists()  # refused before anything was written


def test_vectorised_evaluation_equals_episode_by_episode():
    import gymnasium as gym

    from cdp.rl.trainer import evaluate

    torch.manual_seed(0)
    agent = BC(11, 3, BCConfig())
    env, want = gym.make("Hopper-v5"), []
    for i in range(4):
        obs, _ = env.reset(seed=7 + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(agent.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy())
            total, done = total + r, term or trunc
        want.append(total)
    assert np.allclose(evaluate(agent, "Hopper-v5", 4, seed=7), want, rtol=1e-4)


def test_evaluation_closes_its_environments_when_the_policy_fails(monkeypatch):
    import gymnasium as gym

    import cdp.rl.trainer as trainer

    made = []

    def make_env(env_id):
        env = gym.make(env_id)
        close, env.closed = env.close, False

        def closing():
            env.closed = True
            close()

        env.close = closing
        made.append(env)
        return env

    def failing_policy(obs):
        raise RuntimeError("policy failed")

    monkeypatch.setattr(trainer, "make_env", make_env)
    with pytest.raises(RuntimeError, match="policy failed"):
        trainer.evaluate(BC(11, 3, BCConfig()), "Hopper-v5", 3, seed=0, policy=failing_policy)
    assert len(made) == 4 and all(e.closed for e in made)  # the id check's and the three episodes'


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_expectile_loss_minimiser_is_the_expectile(tau):
    """On samples x, argmin_c expectile_loss(x - c) solves tau E[(x-c)+] = (1-tau) E[(c-x)+]."""
    x = torch.empty(20000).exponential_(generator=torch.Generator().manual_seed(0))  # skewed: expectiles differ from the mean
    c = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([c], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        expectile_loss(x - c, tau).backward()
        opt.step()
    lo, hi = float(x.min()), float(x.max())  # the expectile by bisection on its first-order condition
    for _ in range(60):
        m = (lo + hi) / 2
        g = tau * (x - m).clamp(min=0).mean() - (1 - tau) * (m - x).clamp(min=0).mean()
        lo, hi = (m, hi) if g > 0 else (lo, m)
    c = c.item()
    assert c == pytest.approx(lo, abs=2e-3)
    if tau == 0.5:
        assert c == pytest.approx(float(x.mean()), abs=2e-3)
    assert (tau > 0.5) == (c > float(x.mean()) + 1e-3)


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_run_resumes_from_it(tiny_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cdp.cli", "rl", "train", "bc", "--dataset", tiny_dataset, "--eval-every", "100000",
           "--eval-episodes", "1", "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--steps", "100000"], stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().splitlines()) > 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    line = err.strip().splitlines()[-1]
    step = int(line.split("at step ")[1].split(";")[0])
    assert line.startswith("cdp: stopped by SIGTERM at step ") and "the same command resumes" in line
    assert step >= 300 and step % 5000 != 0  # between two scheduled checkpoints: saved because of the signal
    assert torch.load(out / "checkpoint.pt", weights_only=False)["agent"]["step"] == step
    logged = [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())]
    assert logged == list(range(100, step + 1, 100))
    assert train(TrainConfig(algo="bc", dataset=tiny_dataset, steps=step + 250, eval_every=100000, eval_episodes=1),
                 out, progress=False)["step"] == step + 250  # resumes where the signal left it
    logged = [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())]
    assert logged == list(range(100, step + 251, 100))
