"""Seeds trained side by side in one process leave exactly the files the same runs leave alone."""

import csv
import json

import pytest
import torch

from cdp.rl.ensemble import check_seeds_only, train_ensemble
from cdp.rl.trainer import TrainConfig, train


def rows(path, drop=("seconds",)):
    return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(path.open())]


def agent_weights(run):
    sd = torch.load(run / "checkpoint.pt", weights_only=False)
    return sd["agent"], sd["rng"], sd["torch_rng"]


@pytest.mark.slow
@pytest.mark.parametrize("algo,preset", [("cdp", "cdp"), ("edp", "official")])
def test_an_ensemble_leaves_what_its_runs_leave_alone(tiny_dataset, tmp_path, algo, preset):
    kw = dict(algo=algo, dataset=tiny_dataset, preset=preset, batch_size=32, eval_every=3, eval_episodes=2,
              checkpoint_every=3, log_every=1, fraction=0.5)
    seeds = [0, 1]
    alone = {s: tmp_path / "alone" / f"s{s}" for s in seeds}
    together = {s: tmp_path / "together" / f"s{s}" for s in seeds}
    for s in seeds:
        train(TrainConfig(steps=6, seed=s, **kw), alone[s], progress=False)
    if preset == "cdp":  # three steps together, then resumed together to six (the official preset's lr
        # schedule spans the budget of the call, so a resume with a larger one follows another schedule)
        train_ensemble([TrainConfig(steps=3, seed=s, **kw) for s in seeds], list(together.values()), progress=False)
    sums = train_ensemble([TrainConfig(steps=6, seed=s, **kw) for s in seeds], list(together.values()), progress=False)
    assert [x["step"] for x in sums] == [6, 6]
    for s in seeds:
        a, t = alone[s], together[s]
        assert rows(a / "metrics.csv") == rows(t / "metrics.csv")
        assert rows(a / "eval.csv") == rows(t / "eval.csv")
        (wa, ra, ta), (wt, rt, tt) = agent_weights(a), agent_weights(t)
        assert ra == rt and torch.equal(ta, tt)  # batch order and generator states too
        for part in wa:
            if isinstance(wa[part], dict) and "state" not in wa[part]:
                for k in wa[part]:
                    assert torch.equal(wa[part][k], wt[part][k]), (part, k)
        assert json.loads((a / "config.json").read_text()) == json.loads((t / "config.json").read_text())
    assert rows(alone[0] / "metrics.csv") != rows(alone[1] / "metrics.csv")  # the seeds really differ


def test_a_stop_checkpoints_every_run_even_those_whose_step_ended_before_it(tiny_dataset, tmp_path, monkeypatch):
    """The stop lands while seed 1 steps, after seed 0's step of the same round ended: both runs
    keep that step (before, seed 0's fresh folder was removed for want of a checkpoint)."""
    import signal

    from cdp.rl import trainer
    from cdp.runlog import RunInterrupted

    real = trainer._Run.finish

    def finish(self, losses, stop):
        if self.cfg.seed == 1 and self.agent.step == 2:
            stop.signal = signal.SIGTERM  # what StopSignals' handler records
        return real(self, losses, stop)

    monkeypatch.setattr(trainer._Run, "finish", finish)
    kw = dict(algo="bc", dataset=tiny_dataset, steps=10, eval_every=10, eval_episodes=1, checkpoint_every=100)
    outs = [tmp_path / "s0", tmp_path / "s1"]
    with pytest.raises(RunInterrupted, match="at step 2"):
        train_ensemble([TrainConfig(seed=s, **kw) for s in (0, 1)], outs, progress=False)
    assert [torch.load(o / "checkpoint.pt", weights_only=False)["agent"]["step"] for o in outs] == [2, 2]


@pytest.mark.slow
def test_a_stop_reaches_every_process_of_seeds_dealt_out(tiny_dataset, tmp_path):
    """SIGTERM to `cdp rl train --seeds` alone (as a scheduler sends it): its worker processes
    checkpoint the step each run is on, and the command says so and exits 128 + 15."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "rl", "train", "bc", "--dataset", tiny_dataset,
                             "--steps", "1000000", "--eval-every", "1000000", "--seeds", "0", "1", "2",
                             "--processes", "2", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = [out / f"bc-f1-s{s}" for s in range(3)]
    deadline = time.time() + 120
    while not all(len(rows(r / "metrics.csv")) >= 2 for r in runs if (r / "metrics.csv").is_file()) \
            or not all((r / "metrics.csv").is_file() for r in runs):
        assert time.time() < deadline and proc.poll() is None, "the runs should be training"
        time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    for r in runs:
        logged = int(rows(r / "metrics.csv")[-1]["step"])
        assert torch.load(r / "checkpoint.pt", weights_only=False)["agent"]["step"] >= logged >= 200


def test_an_ensemble_is_one_config_with_several_seeds():
    base = dict(algo="cdp", dataset="d")
    check_seeds_only([TrainConfig(seed=0, **base), TrainConfig(seed=1, **base)])
    with pytest.raises(ValueError, match=r"differ in their seed alone; these differ in \['gamma'\]"):
        check_seeds_only([TrainConfig(seed=0, **base), TrainConfig(seed=1, gamma=1.0, **base)])
    with pytest.raises(ValueError, match="seeds must be distinct"):
        check_seeds_only([TrainConfig(seed=0, **base), TrainConfig(seed=0, **base)])


def test_a_sweep_groups_the_seeds_of_one_config():
    from cdp.sweep import Job, SeedGroup, group_seeds

    def job(seed, gamma=0.1, kind="rl"):
        return Job(kind, {"algo": "cdp", "gamma": gamma, "seed": seed}, f"out/g{gamma}-s{seed}", "res")

    jobs = [job(0), job(0, gamma=1.0), job(1), job(2), job(1, gamma=1.0), job(5, gamma=2.0), job(0, kind="il")]
    units = group_seeds(jobs)
    assert [type(u) for u in units] == [SeedGroup, SeedGroup, Job, Job]
    assert [j.config["seed"] for j in units[0].members] == [0, 1, 2]
    assert [j.config["seed"] for j in units[1].members] == [0, 1]
    assert units[2].config["gamma"] == 2.0 and units[3].kind == "il"  # a lone seed and an imitation job stay single


def test_ensemble_seeds_deals_seeds_over_a_cpus_workers_and_stacks_on_a_gpu_what_stacks(tiny_dataset, monkeypatch):
    import cdp.sweep as sweep
    from cdp.sweep import Job, SeedGroup, deal, seed_units

    def job(seed, form="eig", gamma=0.1):
        cfg = {**TrainConfig(algo="cdp", dataset=tiny_dataset, gamma=gamma, seed=seed, form=form, device="cpu").__dict__}
        return Job("rl", cfg, f"out/cdp-{form}-g{gamma}-s{seed}", None)

    frobenius = "official_frobenius"  # the official runs' form of the term, which does not stack
    jobs = [job(0), job(1), job(2), job(0, gamma=1.0), job(1, gamma=1.0), job(0, frobenius), job(1, frobenius)]
    # on a CPU, over two workers: each config's seeds dealt in turn (0 and 2 share one, 1 alone)
    units = seed_units(jobs, workers=2)
    assert [type(u) for u in units] == [SeedGroup, Job, Job, Job, Job, Job]
    assert [j.config["seed"] for j in units[0].members] == [0, 2]
    assert [(u.config["algo"], u.config["gamma"], u.config["seed"]) for u in units[1:4]] == [
        ("cdp", 0.1, 1), ("cdp", 1.0, 0), ("cdp", 1.0, 1)]
    assert len(seed_units(jobs, workers=1)) == 3  # one worker: whole groups
    assert len(deal(jobs[:3], 5)) == 3  # never more shares than seeds
    # on a GPU: a config that stacks stays one group; the Frobenius form's seeds go alone
    monkeypatch.setattr(sweep, "_on_cpu", lambda j: False)
    units = seed_units(jobs, workers=2)
    assert [type(u) for u in units] == [SeedGroup, SeedGroup, Job, Job]
    assert [len(u.members) for u in units[:2]] == [3, 2]
    assert [u.config["seed"] for u in units[2:]] == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("how", [[], ["--stacked"]])
def test_the_cli_trains_several_seeds_in_one_process(tiny_dataset, tmp_path, how):
    from cdp.cli import main

    args = ["rl", "train", "edp", "--dataset", tiny_dataset, "--steps", "2", "--eval-every", "2", "--eval-episodes", "1",
            "--seeds", "3", "4", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), *how]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["edp-f1-s3", "edp-f1-s4"]
    assert len(list((tmp_path / "res").rglob("*.json"))) == 2


@pytest.mark.slow
def test_the_cli_deals_seeds_out_to_processes_that_leave_what_lone_runs_leave(tiny_dataset, tmp_path, capsys):
    """Three seeds on two processes (seeds 3 and 5 in turn in one, 4 alone in the other): a run's
    evaluations, weights and generators are a lone run's; every run is recorded."""
    from cdp.cli import main

    kw = dict(algo="edp", dataset=tiny_dataset, steps=4, eval_every=2, eval_episodes=1)
    args = ["rl", "train", "edp", "--dataset", tiny_dataset, "--steps", "4", "--eval-every", "2",
            "--eval-episodes", "1", "--seeds", "3", "4", "5", "--processes", "2",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    alone, run = tmp_path / "alone", tmp_path / "runs" / "edp-f1-s5"  # seed 5: in turn after seed 3
    train(TrainConfig(seed=5, **kw), alone, progress=False)
    assert rows(alone / "eval.csv") == rows(run / "eval.csv")
    (wa, ra, ta), (wt, rt, tt) = agent_weights(alone), agent_weights(run)
    assert ra == rt and torch.equal(ta, tt)
    assert wa["actor"] and all(torch.equal(wa["actor"][k], wt["actor"][k]) for k in wa["actor"])
    assert f"run folder: {run}" in printed
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0  # again: finished runs are not trained again, their summaries printed
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.count("run folder:") == 3
    assert sorted(p.name for p in (tmp_path / "res").rglob("*.json")) == [f"edp-f1-s{s}.json" for s in (3, 4, 5)]
    assert rows(tmp_path / "runs" / "edp-f1-s3" / "eval.csv") != rows(tmp_path / "runs" / "edp-f1-s5" / "eval.csv")


@pytest.mark.slow
def test_the_cli_says_why_seeds_cannot_be_stacked(tiny_dataset, tmp_path, capsys):
    from cdp.cli import main

    args = ["rl", "train", "cdp", "--form", "official_frobenius", "--dataset", tiny_dataset, "--steps", "2",
            "--seeds", "3", "4", "--stacked", "--out", str(tmp_path / "runs")]
    assert main(args) == 2
    assert "cannot be stacked (the term stacks with the exact eigenvalue" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
