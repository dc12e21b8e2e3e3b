"""`cdp sweep`: grids of resumable runs in separate processes."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("minari")
pytest.importorskip("mujoco")

from cdp.sweep import _logged_step, is_finished, job_state, load_sweep, run_sweep  # noqa: E402


def write(tmp_path, text, name="sweep.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def config(tmp_path, dataset, steps=6, algos='["bc"]', seeds="[0, 1]", extra=""):
    return write(tmp_path, f"""
kind = "rl"
out = "{tmp_path / 'runs'}"
results = "{tmp_path / 'results'}"
workers = 2
{extra}
[fixed]
dataset = "{dataset}"
steps = {steps}
batch_size = 32
eval_every = {max(steps // 2, 1)}
eval_episodes = 1
checkpoint_every = {max(steps // 20, 1)}
log_every = {max(steps // 20, 1)}

[grid]
seed = {seeds}
algo = {algos}
""")


@pytest.mark.parametrize("text, msg", [
    ('kind = "rl"\nout = "x"\ncolour = 1\n[grid]\nseed = [0]\n', "unknown key"),
    ('kind = "rl"\nout = "x"\n[grid]\n', "grid is empty"),
    ('kind = "rl"\nout = "x"\n[grid]\nseed = []\n', "non-empty list"),
    ('kind = "rl"\nout = "x"\n[grid]\nlearning_rate = [1]\n', "unknown grid key"),
    ('kind = "sl"\nout = "x"\n[grid]\nseed = [0]\n', "unknown kind"),
    ('kind = "rl"\nout = "x"\n[fixed]\ndataset = "d"\n[grid]\nalgo = ["bc", "cql"]\n', "unknown algorithm"),
    ('kind = "rl"\nout = "x"\nworkers = 0\n[fixed]\ndataset = "d"\nalgo = "bc"\n[grid]\nseed = [0]\n', "workers"),
    ('kind = "rl"\nout = "x"\n[grid\n', "not valid TOML"),
    ('kind = "rl"\nout = "x"\ngpus = -1\n[fixed]\ndataset = "d"\nalgo = "bc"\n[grid]\nseed = [0]\n', "gpus must be"),
    ('kind = "rl"\nout = "x"\n[fixed]\ndataset = "d"\nalgo = "bc"\ndevice = "tpu"\n[grid]\nseed = [0]\n', "unknown device"),
])
def test_bad_sweep_configs_fail_before_any_job(tmp_path, text, msg):
    with pytest.raises(ValueError, match=msg):
        load_sweep(write(tmp_path, text))
    assert not (tmp_path / "x").exists()


ARMS = 'kind = "rl"\nout = "o"\n[fixed]\ndataset = "a/b-v0"\n'


def test_arms_cross_only_their_own_keys_after_the_grid(tmp_path):
    p = write(tmp_path, ARMS + '[grid]\nseed = [0, 1]\n[[arms]]\nalgo = "edp"\n'
                              '[[arms]]\nalgo = "cdp"\ngamma = [0.1, 1.0]\nmargin = [0.1, "none"]\n')
    jobs = load_sweep(p).jobs()
    # per seed: EDP once (gamma left at its default), then CDP's 2 x 2 (gamma slowest)
    names = ["edp-f1-s{}", "cdp-f1-s{}", "cdp-f1-mNone-s{}", "cdp-f1-g1-s{}", "cdp-f1-g1-mNone-s{}"]
    assert [j.out for j in jobs] == [f"o/a_b-v0/{n.format(s)}" for s in (0, 1) for n in names]
    assert [(j.config["algo"], j.config["gamma"], j.config["margin"]) for j in jobs[:5]] == [
        ("edp", 0.1, 0.1), ("cdp", 0.1, 0.1), ("cdp", 0.1, None), ("cdp", 1.0, 0.1), ("cdp", 1.0, None)]
    only = write(tmp_path, ARMS + '[[arms]]\nalgo = "bc"\nseed = [3]\n[[arms]]\nalgo = "cdp"\n', "only.toml")
    assert [j.out for j in load_sweep(only).jobs()] == ["o/a_b-v0/bc-f1-s3", "o/a_b-v0/cdp-f1-s0"]


def test_the_docs_study_file_runs_the_runs_its_comment_names(tmp_path):
    docs = (Path(__file__).parents[1] / "docs" / "sweeps.md").read_text()
    text = re.search(r"```toml\n(.*?)```", docs, re.S).group(1)
    named = re.search(r"# runs (.*), then seed 1", text).group(1).split(", ")
    jobs = load_sweep(write(tmp_path, text)).jobs()
    assert [j.out.split("/")[-1] for j in jobs[:len(named)]] == named and len(jobs) == 3 * len(named)


@pytest.mark.parametrize("tail, msg", [
    ('[grid]\nseed = [0]\n[[arms]]\nalgo = "cdp"\ngamma = []\n', "arms\\[0\\] key\\(s\\) \\['gamma'\\] need a value"),
    ('[grid]\nseed = [0]\n[[arms]]\nalgo = "cdp"\nlearning_rate = 1\n', "unknown arms\\[0\\] key"),
    ('[grid]\nseed = [0]\n[[arms]]\nalgo = "edp"\n[[arms]]\ngamma = 1.0\n', "every arm \\(arms\\[1\\] lacks"),
    ('[grid]\nalgo = ["cdp"]\n[[arms]]\nalgo = "edp"\n', "in arms\\[0\\] and also in"),
    ('[grid]\nseed = [0]\n[[arms]]\nalgo = "cdp"\ngamma = "1"\n', "gamma"),
    ('[grid]\nseed = [0]\n[arms]\nalgo = "cdp"\n', "arms must be a non-empty list"),
    ('[grid]\nseed = [0]\n[[arms]]\nalgo = "edp"\ngamma = [0.1, 1.0]\n', "share the run folder"),
])
def test_bad_arms_fail_before_any_job(tmp_path, tail, msg):
    with pytest.raises(ValueError, match=msg):
        load_sweep(write(tmp_path, ARMS + tail))


def test_grid_order_names_and_cli_errors(tmp_path, capsys):
    from cdp.cli import main

    p = write(tmp_path, 'kind = "rl"\nout = "o"\n[fixed]\ndataset = "a/b-v0"\nalgo = "cdp"\n'
                        '[grid]\nseed = [0, 1]\nfraction = [1.0, 0.1]\ngamma = [0.1, 1.0]\n')
    jobs = load_sweep(p).jobs()
    assert [j.out for j in jobs[:4]] == ["o/a_b-v0/cdp-f1-s0", "o/a_b-v0/cdp-f1-g1-s0", "o/a_b-v0/cdp-f0.1-s0",
                                         "o/a_b-v0/cdp-f0.1-g1-s0"]
    assert [j.config["seed"] for j in jobs] == [0] * 4 + [1] * 4  # first key slowest
    nomargin = write(tmp_path, 'kind = "rl"\nout = "o"\n[fixed]\ndataset = "a/b-v0"\nalgo = "cdp"\n'
                               '[grid]\nmargin = [0.1, "none"]\n', "m.toml")
    assert [(j.config["margin"], j.out) for j in load_sweep(nomargin).jobs()] == [(0.1, "o/a_b-v0/cdp-f1-s0"),
                                                                                  (None, "o/a_b-v0/cdp-f1-mNone-s0")]
    same = write(tmp_path, 'kind = "rl"\nout = "o"\n[fixed]\ndataset = "a/b-v0"\nalgo = "edp"\n'
                           '[grid]\ngamma = [0.1, 1.0]\n', "same.toml")  # gamma does not change an EDP run
    with pytest.raises(ValueError, match="share the run folder"):
        load_sweep(same)
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "no sweep config" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_records_and_skips_finished_runs(tiny_dataset, tmp_path):
    sweep = load_sweep(config(tmp_path, tiny_dataset))
    ran = run_sweep(sweep, progress=False)
    assert len(ran) == 2 and all(is_finished(j) for j in sweep.jobs())
    recs = sorted((tmp_path / "results").rglob("*.json"))
    assert [r.name for r in recs] == ["bc-f1-s0.json", "bc-f1-s1.json"]
    assert json.loads(recs[1].read_text())["config"]["seed"] == 1
    stamp = {j.out: os.path.getmtime(os.path.join(j.out, "checkpoint.pt")) for j in sweep.jobs()}
    assert run_sweep(sweep, progress=False) == []  # all finished: nothing runs, nothing is touched
    assert stamp == {j.out: os.path.getmtime(os.path.join(j.out, "checkpoint.pt")) for j in sweep.jobs()}


@pytest.mark.slow
def test_a_sweep_trains_a_grids_seeds_together_and_records_each(tiny_dataset, tmp_path):
    """--ensemble-seeds: the grid's three seeds, dealt over the two workers (seeds 0 and 2 together
    in one, seed 1 alone), leave the records and logs separate runs leave."""
    import csv

    sweep = load_sweep(config(tmp_path, tiny_dataset, seeds="[0, 1, 2]"))
    ran = run_sweep(sweep, progress=False, ensemble_seeds=True)
    assert len(ran) == 3 and all(is_finished(j) for j in sweep.jobs())
    assert sorted(r.name for r in (tmp_path / "results").rglob("*.json")) == [f"bc-f1-s{s}.json" for s in range(3)]
    alone = tmp_path / "alone"
    from cdp.rl.trainer import TrainConfig, train

    job = sweep.jobs()[2]  # trained beside seed 0
    train(TrainConfig(**job.config), alone, progress=False)
    strip = lambda p: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(p.open())]  # noqa: E731
    assert strip(alone / "metrics.csv") == strip(Path(job.out) / "metrics.csv")


@pytest.mark.slow
def test_a_fresh_clone_skips_runs_whose_records_are_committed(tiny_dataset, tmp_path, capsys):
    """Run folders are not committed, records are: a sweep on a clone with only the records must
    not train those runs again, and a record of another config (here a smaller budget) is no
    stand-in for the job."""
    import shutil

    from cdp.cli import main

    cfg = config(tmp_path, tiny_dataset)
    sweep = load_sweep(cfg)
    assert len(run_sweep(sweep, progress=False)) == 2
    shutil.rmtree(tmp_path / "runs")  # what a fresh clone has: the records alone
    assert all(is_finished(j) for j in sweep.jobs())
    state, detail = job_state(sweep.jobs()[0])
    assert state == "done" and detail.startswith("recorded in ") and detail.endswith("bc-f1-s0.json")
    assert run_sweep(sweep, progress=False) == []
    assert not (tmp_path / "runs").exists()  # nothing was trained
    capsys.readouterr()
    assert main(["sweep", str(cfg), "--status"]) == 0
    assert "2 done" in capsys.readouterr().out
    second = sweep.jobs()[1].record_path()
    saved = second.read_text()
    second.unlink()  # one run left: planned at the pace its kind's record was trained at here
    assert main(["sweep", str(cfg), "--status"]) == 0
    assert "h at this machine's own pace (the legs trained on a machine like this one: bc " in capsys.readouterr().out
    second.write_text(saved)
    longer = load_sweep(write(tmp_path, config(tmp_path, tiny_dataset, steps=8).read_text(), "longer.toml"))
    cfg = write(tmp_path, config(tmp_path, tiny_dataset).read_text())  # same folders, the budget as recorded
    assert not any(is_finished(j) for j in longer.jobs())
    record = json.loads(longer.jobs()[0].record_path().read_text())
    record["config"]["batch_size"] = 64  # a record of another config at the full budget
    longer.jobs()[0].record_path().write_text(json.dumps(record))
    assert not is_finished(load_sweep(cfg).jobs()[0]) and is_finished(load_sweep(cfg).jobs()[1])


def test_a_job_another_process_is_training_is_skipped_not_trained_twice(tiny_dataset, tmp_path, capsys):
    from cdp.runlog import claim_run

    sweep = load_sweep(config(tmp_path, tiny_dataset))
    taken, free = sweep.jobs()
    with claim_run(Path(taken.out)):  # as a second `cdp sweep` of the same grid would hold it
        ran = run_sweep(sweep, progress=True)
        state, detail = job_state(taken)
        assert state == "running" and detail.startswith(f"0/6, pid {os.getpid()} on ")
    assert job_state(taken) == ("todo", "") and job_state(free) == ("done", "")
    assert ran == [free] and is_finished(free) and not is_finished(taken)
    assert not (Path(taken.out) / "metrics.csv").exists()  # nothing written into the taken folder
    assert f"skipped: {taken.out} is being trained by pid {os.getpid()}" in capsys.readouterr().out
    assert run_sweep(sweep, progress=False) == [taken] and is_finished(taken)  # free again: it runs


@pytest.mark.slow
def test_two_sweeps_share_one_queue_and_a_shared_run_trains_once(tiny_dataset, tmp_path, capsys):
    from cdp.cli import main
    from cdp.sweep import queue

    a = write(tmp_path, config(tmp_path, tiny_dataset, seeds="[0, 1]").read_text(), "a.toml")
    b = write(tmp_path, config(tmp_path, tiny_dataset, seeds="[1, 2]").read_text(), "b.toml")
    jobs = queue([load_sweep(a), load_sweep(b)])
    assert [os.path.basename(j.out) for j in jobs] == ["bc-f1-s0", "bc-f1-s1", "bc-f1-s2"]  # seed 1 once
    assert main(["sweep", str(a), str(b), "--workers", "2"]) == 0
    assert "3 runs trained" in capsys.readouterr().out
    assert all(is_finished(j) for j in jobs)
    assert sorted(p.name for p in (tmp_path / "results").rglob("*.json")) == [f"bc-f1-s{s}.json" for s in range(3)]
    assert main(["sweep", str(a), str(b), "--status"]) == 0
    assert "3 done, 0 running, 0 stopped, 0 todo (of 3)" in capsys.readouterr().out
    longer = write(tmp_path, config(tmp_path, tiny_dataset, steps=8, seeds="[2]").read_text(), "c.toml")
    with pytest.raises(ValueError, match="different configs"):  # one folder, two budgets: refuse
        queue([load_sweep(b), load_sweep(longer)])


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicating_or_losing_rows(tiny_dataset, tmp_path):
    p = config(tmp_path, tiny_dataset, steps=3000, seeds="[0]")
    job = load_sweep(p).jobs()[0]
    ckpt = os.path.join(job.out, "checkpoint.pt")
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "sweep", str(p)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-run
    proc.wait()
    assert os.path.exists(ckpt) and not is_finished(job), "the kill should land mid-run"
    deadline = time.time() + 10
    while (state := job_state(job))[0] == "running" and time.time() < deadline:
        time.sleep(0.05)  # the killed worker's claim goes when the OS has finished it off
    assert state[0] == "stopped" and state[1].endswith("/3000; resumes from its last checkpoint"), state
    run_sweep(load_sweep(p), progress=False)
    assert is_finished(job)
    steps = [int(r["step"]) for r in csv.DictReader(open(os.path.join(job.out, "metrics.csv")))]
    assert steps == list(range(150, 3001, 150))  # every logged step once, in order
    evals = [int(r["step"]) for r in csv.DictReader(open(os.path.join(job.out, "eval.csv")))]
    assert evals == [1500, 3000]


@pytest.mark.slow
def test_ray_backend_runs_a_two_job_grid(tiny_dataset, tmp_path, monkeypatch):
    import shutil
    import tempfile

    ray = pytest.importorskip("ray")
    # Ray's session folder and its ~/.ray token go into a short folder removed afterwards (its
    # socket paths must stay under ~107 characters, which pytest's tmp_path can exceed)
    scratch = Path(tempfile.mkdtemp(prefix="cdp-ray-"))
    monkeypatch.setenv("HOME", str(scratch))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,  # a local instance, as on a cluster head
             _temp_dir=str(scratch / "r"))
    try:
        sweep = load_sweep(config(tmp_path, tiny_dataset))
        done = []
        ran = run_sweep(sweep, progress=False, backend="ray", on_done=done.append)
        assert len(ran) == 2 and sorted(j.out for j in done) == sorted(j.out for j in sweep.jobs())
        assert all(is_finished(j) for j in sweep.jobs())
        assert sorted(p.name for p in (tmp_path / "results").rglob("*.json")) == ["bc-f1-s0.json", "bc-f1-s1.json"]
        assert run_sweep(sweep, progress=False, backend="ray") == []  # finished runs are skipped here too
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    with pytest.raises(ValueError, match="unknown backend"):
        run_sweep(sweep, backend="dask")


@pytest.mark.slow
def test_workers_die_with_the_sweep(tiny_dataset, tmp_path):
    """Killing only the sweep process (SIGTERM, as a scheduler does) leaves no worker training: the
    sweep passes the stop on, its worker checkpoints, and the sweep ends with one line."""
    p = config(tmp_path, tiny_dataset, steps=100000, seeds="[0]")
    # no scheduled checkpoint before the end: the only one written is the stop's, whatever step it finds
    p.write_text(p.read_text().replace("log_every = 5000", "log_every = 100")
                 .replace("checkpoint_every = 5000", "checkpoint_every = 100000"))
    job = load_sweep(p).jobs()[0]
    proc = subprocess.Popen([sys.executable, "-m", "cdp.cli", "sweep", str(p)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    ckpt = os.path.join(job.out, "checkpoint.pt")
    # stop once the worker is training (a logged row); the wait ends on that event, the deadline
    # only keeps a broken run from hanging the suite
    deadline = time.time() + 600
    while not _logged_step(job) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    logged = _logged_step(job)
    assert logged and not os.path.exists(ckpt), "the worker should be training, with no checkpoint yet"
    children = [int(x) for x in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert children, "the sweep should have a worker"
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM: 1 running job(s) checkpointed" in err and "Traceback" not in err

    def running(pid):
        try:
            return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 30
    while any(running(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(running(c) for c in children)
    import torch

    step = torch.load(ckpt, weights_only=False)["agent"]["step"]
    assert logged <= step < 100000, step  # the worker checkpointed the step the stop found it on, then died


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_a_pool_worker_gets_the_threads_it_was_given():
    """torch caps a pool sized by OMP_NUM_THREADS at the core count: the initializer sizes it."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from cdp.sweep import init_worker

    wanted = (os.cpu_count() or 1) + 1  # never torch's default, which is at most the core count
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=init_worker, initargs=(wanted,)) as pool:
        assert pool.submit(_torch_threads).result() == wanted


def test_live_progress_shows_the_steps_of_running_jobs_only(tmp_path):
    from cdp.sweep import Job, live_progress

    def job(name, lines, age_s=0.0):
        out = tmp_path / name
        out.mkdir()
        (out / "metrics.csv").write_text("\n".join(lines) + "\n")
        t = time.time() - age_s
        os.utime(out / "metrics.csv", (t, t))
        return Job("rl", {"steps": 100}, str(out))

    running = job("edp-f1-s0", ["step,loss,seconds", "20,0.5,1.0", "40,0.4,2.0"])
    stale = job("cdp-f1-s0", ["step,loss,seconds", "60,0.5,1.0"], age_s=3600)  # queued, resumes later
    fresh = job("cdp-f0.1-s0", ["step,loss,seconds"])  # just started: no step logged yet
    missing = Job("rl", {"steps": 100}, str(tmp_path / "not-started"))
    assert live_progress([running, stale, fresh, missing]) == "edp-f1-s0 40/100"
    assert live_progress([stale], recent_s=7200) == "cdp-f1-s0 60/100"
    (tmp_path / "walker").mkdir()
    twin = job("walker/edp-f1-s0", ["step,loss,seconds", "80,0.5,1.0"])  # the same run name on another dataset
    assert live_progress([running, twin]) == f"{tmp_path.name}/edp-f1-s0 40/100, walker/edp-f1-s0 80/100"


def test_hours_left_goes_by_the_finished_runs_pace_per_kind(tmp_path):
    from cdp.sweep import Job, hours_left

    def job(name, algo, steps=2000, summary=None, logged=None):
        out = tmp_path / name
        out.mkdir()
        if summary is not None:
            (out / "summary.json").write_text(json.dumps({"step": steps, "seconds_per_1k_steps": summary}))
        if logged is not None:
            (out / "metrics.csv").write_text(f"step,loss\n{logged},0.1\n")
        return Job("rl", {"algo": algo, "steps": steps}, str(out))

    jobs = [job("a", "edp", summary=36.0), job("b", "edp", summary=72.0), job("c", "edp", summary=40.0),
            job("d", "edp", logged=500), job("e", "edp")]
    # median edp pace 40 s per 1k: 1.5k + 2k steps left
    assert hours_left(jobs) == pytest.approx((1.5 + 2.0) * 40 / 3600)
    assert hours_left([*jobs, job("f", "bc")]) is None  # no finished bc run to go by
    assert hours_left(jobs[:3]) == 0


def test_imitation_paces_are_kept_apart_by_task_and_estimator(tmp_path):
    """A CDP step with the exact eigenvalue costs several Lanczos-4 steps, and a Transport run
    many Lift runs: a queue mixing them plans each at its own pace."""
    from cdp.sweep import Job, finished_pace, hours_left

    def job(name, task="lift", policy="cdp-unet", summary=None, **est):
        out = tmp_path / name
        out.mkdir()
        if summary is not None:
            (out / "summary.json").write_text(json.dumps({"step": 1000, "seconds_per_1k_steps": summary}))
        return Job("il", {"task": task, "policy": policy, "steps": 1000, **est}, str(out))

    exact = dict(products="auto", exact_max_dim=256, contraction_subbatch=16)
    jobs = [job("a", summary=250.0, **exact), job("b", summary=50.0), job("c", policy="dp-unet", summary=40.0),
            job("d", task="transport", policy="dp-unet", summary=400.0)]
    assert finished_pace(jobs) == {"lift/cdp-unet-auto-x256-sub16": 250.0, "lift/cdp-unet": 50.0,
                                   "lift/dp-unet": 40.0, "transport/dp-unet": 400.0}
    # one run of each left: the exact CDP at its own pace, not the Lanczos-4 one's
    todo = [job("e", **exact), job("f"), job("g", task="transport", policy="dp-unet")]
    assert hours_left(jobs + todo) == pytest.approx((250 + 50 + 400) / 3600)
    assert hours_left([job("h", task="transport", policy="cdp-unet", **exact)]) is None  # nothing to go by


def test_pace_now_reads_the_running_leg_and_feeds_hours_left(tmp_path, monkeypatch):
    from cdp import sweep
    from cdp.runlog import claim_run
    from cdp.sweep import Job, current_pace, finished_pace, hours_left, pace_of_the_day, recent_pace

    def job(name, algo, rows, steps=10_000, summary=None):
        out = tmp_path / name
        out.mkdir()
        if summary is not None:
            (out / "summary.json").write_text(json.dumps({"step": steps, "seconds_per_1k_steps": summary}))
        if rows is not None:
            lines = "".join(f"{s},0.5,{t}\n" for s, t in rows)
            (out / "metrics.csv").write_text("step,loss,seconds\n" + lines)
        return Job("rl", {"algo": algo, "steps": steps}, str(out))

    # first leg at 10 s per 1k to step 3000; resumed process restarts its clock at 3000, 50 s per 1k
    legs = [(s, s / 100) for s in range(1000, 3001, 1000)] + [(s, (s - 3000) / 20) for s in range(3500, 6001, 500)]
    running = job("a", "idql", legs)
    assert recent_pace(running) == pytest.approx(50.0)  # only the latest leg
    assert recent_pace(running, rows=2) == pytest.approx(50.0)
    assert recent_pace(job("b", "idql", [(100, 1.0)])) is None  # one row: no pace yet
    done = job("c", "idql", None, summary=20.0)
    jobs = [running, done]
    assert finished_pace(jobs) == {"idql": 20.0}
    assert current_pace(jobs) == {}  # logged a moment ago, but nobody trains it: a run just stopped
    with claim_run(Path(running.out)):  # a live process holds it: running
        assert current_pace(jobs) == {"idql": pytest.approx(50.0)}
        assert current_pace(jobs, recent_s=-1) == {}  # nothing written since: not running
        finished = job("d", "dql", legs, steps=6000, summary=30.0)  # just finished: not running either
        with claim_run(Path(finished.out)):
            assert current_pace([finished]) == {}
        now = current_pace(jobs)
        # a host 2.5 times slower today than when the runs finished: a kind not running now is planned
        # at its finished pace times 2.5, the running kind at its own
        other = job("e", "dql", None, summary=30.0)
        assert pace_of_the_day([*jobs, other]) == {"idql": pytest.approx(50.0), "dql": pytest.approx(75.0)}
    assert pace_of_the_day([*jobs, other]) == {"idql": 20.0, "dql": 30.0}  # nothing runs: the finished pace
    reads = []
    real_summary = sweep.finished_summary
    monkeypatch.setattr(sweep, "finished_summary", lambda j: reads.append(j.out) or real_summary(j))
    pace_of_the_day([*jobs, other])
    assert sorted(reads) == sorted(j.out for j in [*jobs, other])  # each record read once for both paces
    # 4000 steps left for the running job
    assert hours_left(jobs) == pytest.approx(4 * 20 / 3600)
    assert hours_left(jobs, pace=now) == pytest.approx(4 * 50 / 3600)


def test_the_plan_goes_by_this_machines_own_legs_before_other_hosts_records(tmp_path, monkeypatch):
    from cdp import sweep
    from cdp.runlog import claim_run
    from cdp.sweep import Job, finished_pace, pace_of_the_day, this_machine

    here, slow = "cpu (Fast CPU, AVX512) on vm", "cpu (Slow CPU, AVX2) on vm"

    def job(name, algo, legs=None, rows=None, steps=10_000, pace=None):
        out = tmp_path / name
        out.mkdir()
        if legs is not None:  # (where, steps, seconds) per leg
            at, rec = 0, []
            for where, n, sec in legs:
                rec.append({"from": at, "to": at + n, "where": where, "seconds": sec})
                at += n
            pace = 1000 * sum(sec or 0 for _, _, sec in legs) / steps if pace is None else pace
            (out / "summary.json").write_text(json.dumps({"step": steps, "seconds_per_1k_steps": pace, "legs": rec}))
        if rows is not None:
            (out / "metrics.csv").write_text("step,loss,seconds\n" + "".join(f"{s},0.5,{t}\n" for s, t in rows))
        return Job("rl", {"algo": algo, "steps": steps}, str(out))

    monkeypatch.setattr(sweep, "this_machine", lambda j: here)
    jobs = [
        job("edp-slow", "edp", [(slow, 10_000, 1600.0)]),          # 160 s per 1k on the slow host
        job("edp-mixed", "edp", [("unknown", 4000, None), (slow, 2000, 320.0), (here, 4000, 200.0)]),
        job("edp-here", "edp", [(here, 10_000, 560.0)]),           # 56 s per 1k here
        job("bc-slow", "bc", [(slow, 10_000, 300.0)]),              # only ever trained elsewhere
        job("edp-old", "edp", [], pace=300.0),                       # a record from before legs
    ]
    # any host: the records' own figures, edp's median of 52, 56, 160 and 300
    assert finished_pace(jobs) == {"edp": pytest.approx(160.0), "bc": pytest.approx(30.0)}
    # here: only the legs trained here, each run's pace from them: 50 (200 s / 4k) and 56
    assert finished_pace(jobs, where=sweep.this_machine) == {"edp": pytest.approx(56.0)}
    # nothing runs: edp at this machine's own pace, bc at the only pace it has
    assert pace_of_the_day(jobs) == {"edp": pytest.approx(56.0), "bc": pytest.approx(30.0)}
    # edp runs now at 112 s per 1k, 2x its pace here and 0.7x its pace anywhere: bc, known only
    # from another host, is scaled like edp's any-host pace (30 x 0.7)
    running = job("edp-now", "edp", rows=[(s, s * 0.112) for s in range(1000, 4001, 1000)])
    with claim_run(Path(running.out)):
        assert pace_of_the_day([*jobs, running]) == {"edp": pytest.approx(112.0), "bc": pytest.approx(21.0)}
        # a kind with a pace here and not running is scaled like edp's pace here (x 2)
        idql = job("idql-here", "idql", [(here, 10_000, 400.0)])
        assert pace_of_the_day([*jobs, running, idql])["idql"] == pytest.approx(80.0)
    monkeypatch.undo()
    assert this_machine(Job("rl", {"algo": "bc", "device": "cpu"}, "x")).startswith("cpu ")


def test_a_sweep_makes_the_missing_datasets_make_data_makes_once_before_any_job(tmp_path, monkeypatch):
    import minari

    from cdp.data import generate
    from cdp.il import tasks
    from cdp.sweep import Job, make_missing_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(minari, "list_local_datasets", lambda: {"cdp/hopper/medium-v0": None})
    made_rl, made_il = [], []
    monkeypatch.setattr(generate.DataRecipe, "make", lambda self: made_rl.append(self) or "id")

    def fake_demos(task, quality, path, progress=False, if_missing=False):
        assert if_missing  # (another sweep may be making it: take what it made)
        made_il.append((task, quality, str(path)))
        return path

    monkeypatch.setattr(tasks, "write_demos", fake_demos)
    (tmp_path / "data" / "il").mkdir(parents=True)
    (tmp_path / "data" / "il" / "lift_ph.hdf5").write_bytes(b"")  # there already
    rl = [Job("rl", {"dataset": d, "seed": s}, f"runs/{d}/{s}") for d in
          ("cdp/hopper/medium-replay-v0", "cdp/hopper/medium-v0", "D4RL/hopper/expert-v2", "data/mine.hdf5")
          for s in (0, 1)]
    il = [Job("il", {"task": t, "dataset": p, "seed": s}, f"runs/{t}/{p}/{s}") for t, p in
          (("reach", "data/il/reach_mh.hdf5"), ("lift", "data/il/lift_ph.hdf5"), ("reach", "elsewhere/reach.hdf5"))
          for s in (0, 1)]
    made = make_missing_data(rl + il)
    # only the missing datasets whose names make-data gives, each once (two seeds read each)
    assert made_rl == [generate.DataRecipe("Hopper-v5", "medium-replay")]
    assert made_il == [("reach", "mh", "data/il/reach_mh.hdf5")]
    assert made == ["id", "data/il/reach_mh.hdf5"]


def queued_job(tmp_path, name, algo, steps=10_000, logged=None):
    """A queued job with its folder: empty, or with a log whose last row is step ``logged``."""
    from cdp.sweep import Job

    out = tmp_path / name
    out.mkdir()
    if logged is not None:
        (out / "metrics.csv").write_text(f"step,loss\n{logged},0.1\n")
    return Job("rl", {"algo": algo, "steps": steps}, str(out))


#: seconds per 1k steps for the time-limit tests: 10k EDP steps need 600 s, 50k need 3000 s; BC a tenth
PACE = {"edp": 60.0, "bc": 6.0}


def test_under_a_time_limit_the_first_run_that_fits_goes_next(tmp_path):
    from cdp.sweep import SeedGroup, first_that_fits, seconds_needed

    edp, edp_half = queued_job(tmp_path, "edp", "edp"), queued_job(tmp_path, "edp2", "edp", logged=5000)
    bc, idql = queued_job(tmp_path, "bc", "bc"), queued_job(tmp_path, "idql", "idql")
    assert seconds_needed(edp, PACE) == 600 and seconds_needed(edp_half, PACE) == 300  # from its last logged step
    assert seconds_needed(bc, PACE) == 60 and seconds_needed(idql, PACE) is None
    assert seconds_needed(SeedGroup([edp, edp_half]), PACE) == 900  # seeds of a group train in turn
    assert first_that_fits([edp, edp_half, bc], PACE, 600) is edp
    assert first_that_fits([edp, edp_half, bc], PACE, 599) is edp_half  # a later, shorter run goes first
    assert first_that_fits([edp, bc], PACE, 100) is bc
    assert first_that_fits([edp, bc], PACE, 59) is None
    assert first_that_fits([edp, idql], PACE, 1) is idql  # no pace to go by: nothing says it does not fit


@pytest.mark.slow
def test_a_time_limit_stops_the_running_runs_at_a_checkpoint_and_starts_none_that_cannot_finish(
        tiny_dataset, tmp_path, capsys):
    from cdp.cli import main

    def sweep_file(name, steps, seeds):
        text = config(tmp_path, tiny_dataset, steps=steps, seeds=seeds).read_text()
        return write(tmp_path, text.replace("workers = 2", "workers = 1").replace("/runs", f"/runs-{name}")
                     .replace("/results", f"/results-{name}"), f"{name}.toml")

    # a finished 200-step run sets bc's pace; at that pace the 100k-step runs cannot finish in 20 s
    short, long = sweep_file("short", 200, "[0]"), sweep_file("long", 100_000, "[1, 2]")
    long.write_text(long.read_text().replace("checkpoint_every = 5000", "checkpoint_every = 100000"))
    t0 = time.time()
    run_sweep(load_sweep(short), progress=False)
    # a worker's start and the short run, timed on this machine as loaded now: a limit well past it
    # lets the long run start training before the stop, however slow the machine
    limit_s = 2 * (time.time() - t0) + 10
    pace = json.loads((Path(load_sweep(short).jobs()[0].out) / "summary.json").read_text())["seconds_per_1k_steps"]
    assert 100 * pace > 20, "the long runs must be estimated past the limit"
    assert main(["sweep", str(short), str(long), "--time-limit", "20s"]) == 0
    assert "time limit: 0 run(s) stopped at the limit, checkpointed (they resume); 2 not started" in capsys.readouterr().out
    jobs = load_sweep(long).jobs()
    assert [job_state(j)[0] for j in jobs] == ["todo", "todo"]
    # alone, with no finished run of the kind to go by, the first long run starts and is stopped at
    # the limit, at a checkpoint; the second (one worker) never starts
    assert 100 * pace > limit_s, "the long run must not finish within the limit"
    assert run_sweep(load_sweep(long), progress=False, time_limit_s=limit_s) == []
    assert "time limit: 1 run(s) stopped at the limit, checkpointed (they resume); 1 not started" in capsys.readouterr().out
    from cdp.runlog import load_checkpoint

    at = load_checkpoint(Path(jobs[0].out) / "checkpoint.pt")["agent"]["step"]
    assert job_state(jobs[0])[0] == "stopped" and 0 < at < 100_000  # written at the stop (none is scheduled before the end)
    assert job_state(jobs[1])[0] == "todo"
    with pytest.raises(ValueError, match="local backend and a positive"):
        run_sweep(load_sweep(long), progress=False, backend="ray", time_limit_s=10)
    with pytest.raises(SystemExit) as bad:
        main(["sweep", str(long), "--time-limit", "20"])
    assert bad.value.code == 2 and "a positive duration such as 90s, 45m or 2.5h is needed, got '20'" in capsys.readouterr().err


def four_jobs(tmp_path):
    return [queued_job(tmp_path, n, algo, 50_000) for n, algo in (("a", "edp"), ("b", "edp"), ("c", "bc"), ("d", "edp"))]


def test_a_time_limits_plan_fills_each_worker_with_the_first_run_that_fits(tmp_path):
    from cdp.sweep import plan_within

    a, b, c, d = four_jobs(tmp_path)
    # 3000 s each for a, b, d; 300 s for c; two workers, 3500 s: a and b at once, then only c fits
    plan = plan_within([a, b, c, d], PACE, workers=2, seconds=3500)
    assert [(u.out, s, e) for u, s, e in plan] == [(a.out, 0, 3000), (b.out, 0, 3000), (c.out, 3000, 3300)]
    # one worker, 6400 s: a, then b, then c (d would end at 9300)
    assert [(u.out, e) for u, _, e in plan_within([a, b, c, d], PACE, 1, 6400)] == [(a.out, 3000), (b.out, 6000),
                                                                                    (c.out, 6300)]
    # a run of unknown pace starts and holds its worker to the limit
    e = queued_job(tmp_path, "e", "idql", 1000)
    assert [(u.out, s, x) for u, s, x in plan_within([e, a, c], PACE, 1, 1000)] == [(e.out, 0, None)]
    assert plan_within([a], PACE, 2, 100) == []


def test_fill_starts_a_run_that_cannot_finish_only_when_no_queued_run_fits(tmp_path, capsys):
    from cdp.cli import main
    from cdp.sweep import first_that_fits, plan_within

    a, b, c, d = four_jobs(tmp_path)
    assert first_that_fits([a, c], PACE, 299, fill=True) is a  # nothing fits: the first queued
    assert first_that_fits([a, c], PACE, 300, fill=True) is c  # a run that fits still goes first
    assert first_that_fits([], PACE, 10, fill=True) is None
    # one worker, 3500 s: a (3000 s), then c (300 s), then b started for the last 200 s, to resume later
    assert [(u.out, s, e) for u, s, e in plan_within([a, b, c, d], PACE, 1, 3500, fill=True)] == [
        (a.out, 0, 3000), (c.out, 3000, 3300), (b.out, 3300, None)]
    # two workers: a and b, then c on one worker and d (which cannot finish) on the other
    assert [(u.out, s, e) for u, s, e in plan_within([a, b, c, d], PACE, 2, 3500, fill=True)] == [
        (a.out, 0, 3000), (b.out, 0, 3000), (c.out, 3000, 3300), (d.out, 3000, None)]
    needs_limit = "fill (--fill) needs a time limit (--time-limit) to stop the runs it starts at"
    with pytest.raises(ValueError, match=re.escape(needs_limit)):
        run_sweep([], progress=False, fill=True)
    assert main(["sweep", "offline_rl_forms", "--fill"]) == 2  # refused before any run or dataset
    assert capsys.readouterr().err == f"cdp: error: {needs_limit}\n"



@pytest.mark.parametrize("tty", [False, True])
def test_a_progress_line_in_a_log_file_is_redrawn_only_when_it_moves(tty):
    import io

    from tqdm import tqdm

    from cdp.sweep import LiveLine

    out = io.StringIO()
    bar = tqdm(total=10, file=out, desc="sweep", mininterval=0)
    line = LiveLine(bar, tty=tty)
    for _ in range(5):  # five polls, nothing moved
        line.show(postfix="a 100/1000")
    line.show(postfix="a 200/1000")
    for _ in range(3):
        line.show(n=4)
    draws = [d for d in out.getvalue().split("\r") if d.startswith("sweep")]
    # the empty bar, then a file gets one line per change (a 100, a 200, n = 4), a terminal one per poll
    assert len(draws) == (1 + 9 if tty else 1 + 3), draws
    assert "4/10" in draws[-1] and "a 200/1000" in draws[-1]
    off = tqdm(total=10, file=out, disable=True)  # progress turned off: nothing drawn, nothing raised
    LiveLine(off, tty=tty).show(postfix="a 300/1000", n=5)
    assert out.getvalue().count("\r") == len(draws)


def test_device_on_the_command_line_trains_every_run_there_and_keeps_their_folders(tiny_dataset, tmp_path, capsys):
    """A study written for a GPU (``device = "cuda"``) runs on this CPU with ``--device cpu``;
    where a run trained is not part of its config, so a second sweep on another device finds it
    done."""
    from cdp.cli import main

    p = config(tmp_path, tiny_dataset, steps=4, seeds="[0]", extra="").read_text()
    p = write(tmp_path, p.replace("[fixed]\n", '[fixed]\ndevice = "cuda"\n'), "gpu.toml")
    job = load_sweep(p).jobs()[0]
    if not torch_cuda():  # as written it cannot train here
        assert main(["sweep", str(p)]) != 0 and not is_finished(job)
    capsys.readouterr()
    assert main(["sweep", str(p), "--device", "cpu"]) == 0
    assert is_finished(job) and json.loads((Path(job.out) / "config.json").read_text())["device"] == "cpu"
    assert "0 runs trained" in (main(["sweep", str(p), "--device", "auto"]) == 0 and capsys.readouterr().out)
    assert main(["sweep", str(p), "--device", "tpu"]) == 2
    assert "unknown device 'tpu'; use cpu, cuda, cuda:N, mps or auto" in capsys.readouterr().err


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_a_worker_stopped_by_its_signal_leaves_no_semaphore_for_the_tracker_to_warn_of(tmp_path):
    """A stopped run ends its worker by the signal (run_job), which skips exit handlers: whatever
    named semaphore the worker made stays registered, and the resource tracker warns of a leak
    when the sweep ends. A progress bar (tqdm) made one in every worker that trained."""
    script = tmp_path / "stop.py"
    script.write_text('''
import os, signal
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

def stopped_run():
    from tqdm import tqdm
    from cdp.sweep import prepare_training_process
    prepare_training_process(1)  # as run_job's training does first
    tqdm(range(3), disable=True)  # the trainers' bars, off in a sweep
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # as run_job ends a stopped worker

if __name__ == "__main__":
    from cdp.sweep import init_worker
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=init_worker, initargs=(1,)) as pool:
        err = pool.submit(stopped_run).exception()
    print(type(err).__name__)
''')
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "BrokenProcessPool"  # the worker did end by its signal
    assert "leaked semaphore" not in res.stderr, res.stderr
