"""Imitation: the procedural task and its demonstrator, the policies' deployment API, and the
trainer on small real runs."""

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("h5py")
pytest.importorskip("safetensors")

from cdp.data import DatasetError  # noqa: E402
from cdp.data.robomimic import read_robomimic, write_robomimic  # noqa: E402
from cdp.il.bcgmm import BCGMM, BCGMMConfig  # noqa: E402
from cdp.il.dbc import DBC, DBCConfig  # noqa: E402
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig, load_policy  # noqa: E402
from cdp.il.tasks import get_task  # noqa: E402
from cdp.il.reach import GOALS, MultiReach, demonstrate, make_demos  # noqa: E402
from cdp.il.trainer import ILTrainConfig, evaluate, train  # noqa: E402
from cdp.il.windows import ChunkWindows  # noqa: E402
from cdp.runlog import append_csv  # noqa: E402


@pytest.fixture(scope="module")
def reach_file(tmp_path_factory):
    return str(write_robomimic(tmp_path_factory.mktemp("il") / "reach_ph.hdf5", make_demos(60, "ph", seed=0)))


def test_reach_demonstrator_succeeds_and_is_multimodal():
    env, rng = MultiReach(), np.random.default_rng(0)
    first, succ = [], 0
    for i in range(60):
        demo = demonstrate(env, rng, "better", seed=i)
        succ += demo is not None
        first.append(env.order[0])
        if demo is not None:  # the demo's last step touches the last goal; every goal within the radius once
            assert demo.dones[-1] and demo.rewards[-1] == 1 and len(demo) <= env.horizon
            assert sorted(env.order) == [0, 1, 2]
    assert succ == 60
    counts = np.bincount(first, minlength=3)
    assert counts.min() >= 10  # three first goals, each about a third of the time
    a, _ = MultiReach().reset(seed=3)
    b, _ = MultiReach().reset(seed=3)
    assert np.array_equal(a["agent_pos"], b["agent_pos"])  # fixed initial states per seed
    # each step's recorded state is the one its action was taken in: replaying the actions from the
    # first state passes through every later one (up to the float32 the actions are stored in) and
    # ends touching all goals
    demo = demonstrate(env, rng, "worse", seed=7)
    env.reset_to(demo.states[0])
    for i, a in enumerate(demo.actions):
        np.testing.assert_allclose(env.get_state(), demo.states[i], rtol=0, atol=1e-6)
        _, _, term, _, _ = env.step(a)
    assert term and len(demo.states) == len(demo.actions)
    start, _ = MultiReach().reset(seed=7)  # the first state is the reset's, each observation its step's state
    np.testing.assert_array_equal(demo.obs["agent_pos"][0], start["agent_pos"])
    np.testing.assert_array_equal(demo.obs["agent_pos"], demo.states[:, :2].astype(np.float32))


def test_reach_env_physics():
    env = MultiReach()
    env.reset(seed=0)
    env.reset_to(np.array([GOALS[0, 0], GOALS[0, 1] - 0.15, 0, 0, 0, 0, 0]))
    for _ in range(3):
        _, r, term, _, info = env.step(np.array([0.0, 1.0]))
    assert env.state[4] == 1 and env.order == [0] and not term  # touched goal 0 moving up at ~0.01-0.03/step
    assert abs(env.state[3] - 0.01 * (1 + 0.8 + 0.64)) < 1e-12  # v <- 0.8 v + 0.01 a


def _stub_policy(To=2, Tp=6, Ta=3, chunk_start="history"):
    cfg = DiffusionPolicyConfig(obs_keys=["x"], obs_dim=1, action_dim=1, n_obs_steps=To, horizon=Tp, n_action_steps=Ta,
                                backbone="mlp", mlp_hidden=8, chunk_start=chunk_start)
    pol = DiffusionPolicy(cfg)
    calls = []

    def predict_chunk(obs):  # chunk k = 100 k + position, and remember the history it saw
        calls.append(obs.clone())
        k = len(calls)
        return torch.arange(Tp, dtype=torch.float32).expand(obs.shape[0], Tp)[..., None] + 100 * k

    pol.predict_chunk = predict_chunk
    return pol, calls


def test_select_action_queue_semantics():
    pol, calls = _stub_policy(To=2, Tp=6, Ta=3)
    pol.reset()
    got = [float(pol.select_action({"x": np.array([float(i)])})[0]) for i in range(7)]
    # chunk 1 at step 0: executes positions To-1 .. To-1+Ta-1 = 1, 2, 3; chunk 2 at step 3; chunk 3 at step 6
    assert got == [101, 102, 103, 201, 202, 203, 301]
    assert len(calls) == 3
    assert calls[0][0, :, 0].tolist() == [0, 0]  # after reset the first observation fills the history
    assert calls[1][0, :, 0].tolist() == [2, 3] and calls[2][0, :, 0].tolist() == [5, 6]
    pol.reset()
    assert pol.select_action({"x": np.array([9.0])}).shape == (1,) and len(calls) == 4  # reset empties the queue
    pol.reset()
    batched = pol.select_action({"x": np.array([[1.0], [2.0]])})
    assert batched.shape == (2, 1)
    with pytest.raises(KeyError, match="lacks"):
        pol.select_action({"y": np.array([1.0])})


def test_a_chunk_from_the_current_step_executes_from_its_start(reach_file):
    """chunk_start="current" (the official low-dim runs: one action, the current one): the
    executed actions are the chunk's first, and a training window's chunk starts at its step."""
    pol, calls = _stub_policy(To=2, Tp=3, Ta=2, chunk_start="current")
    pol.reset()
    assert [float(pol.select_action({"x": np.array([float(i)])})[0]) for i in range(4)] == [100, 101, 200, 201]
    one, calls = _stub_policy(To=2, Tp=1, Ta=1, chunk_start="current")
    one.reset()
    assert [float(one.select_action({"x": np.array([float(i)])})[0]) for i in range(3)] == [100, 200, 300]
    assert calls[2][0, :, 0].tolist() == [1, 2]  # each step predicts from the last two observations
    with pytest.raises(ValueError, match="do not fit a horizon of 1"):
        _stub_policy(To=2, Tp=1, Ta=1)  # Diffusion Policy's chunk: the current step is its index 1
    demo = read_robomimic(reach_file).subset(["demo_0"]).demos["demo_0"]
    w = ChunkWindows(read_robomimic(reach_file).subset(["demo_0"]), ["agent_pos"], n_obs_steps=2, horizon=2,
                     action_start=one.action_start)
    obs, act = w.batch(torch.tensor([3]))
    assert torch.equal(act[0], torch.as_tensor(demo.actions[3:5]))  # a_t, a_t+1 for the window at t = 3
    assert torch.equal(obs[0], torch.as_tensor(demo.obs["agent_pos"][2:4]))


def test_a_one_action_policy_trains_and_acts(reach_file, tmp_path):
    """The official low-dim runs' form: To 2, one action per step (horizon 1, Ta 1, the chunk from
    the current step), with the term on that action."""
    cfg = ILTrainConfig(policy="cdp-dit", task="reach", dataset=reach_file, steps=4, batch_size=16, eval_every=4,
                        eval_episodes=2, dit_width=16, dit_depth=1, sample_steps=2, contraction_subbatch=4,
                        log_every=1, horizon=1, n_action_steps=1, chunk_start="current")
    assert cfg.run_name() == "cdp-dit-f1-h1a1-current-auto-x256-s0"
    s = train(cfg, tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert s["step"] == 4 and 0 <= s["final"] <= 1 and len(rows) == 4
    pol = load_policy(tmp_path / "run" / "policy")
    assert (pol.config.horizon, pol.config.chunk_start, pol.action_start) == (1, "current", 0)
    assert all(float(r["contraction_rows"]) == 4 for r in rows)
    with pytest.raises(ValueError, match="needs a horizon divisible by 4"):  # before anything is written
        ILTrainConfig(policy="dp-unet", task="reach", dataset=reach_file, horizon=1, n_action_steps=1,
                      chunk_start="current")


def test_the_official_imitation_form_trains_on_x0_with_its_frobenius_term(reach_file, tmp_path):
    """x0 prediction, T = 50 and the official runs' Frobenius term are run options: the policy's
    loss on a tiny batch is |x0_hat - x0|^2 plus gamma * mean over rows of mean((sym dx0_hat/da + 0.1 I)^2),
    taken here from autograd's full Jacobian; a run saves and reloads that form."""
    from cdp.diffusion.schedule import VPSchedule
    from cdp.il.trainer import make_policy_config
    from cdp.report import _method, base_of

    kw = dict(task="reach", dataset=reach_file, horizon=1, n_action_steps=1, chunk_start="current",
              prediction="x0", diffusion_steps=50, sampler="dpm_solver++", sample_steps=3)
    cfg = ILTrainConfig(policy="cdp-mlp", form="official_frobenius", gamma=1.0, **kw)
    assert cfg.run_name() == "cdp-mlp-f1-h1a1-current-predx0-T50-g1-official_frobenius-auto-x256-s0"
    base = ILTrainConfig(policy="dp-mlp", **kw)
    assert base_of(_method(cfg.run_name())) == _method(base.run_name()) == "dp-mlp-h1a1-current-predx0-T50"
    task = get_task("reach")
    torch.manual_seed(0)
    pol = DiffusionPolicy(make_policy_config(cfg, task))
    pol.set_stats(np.random.default_rng(0).normal(size=(40, task.obs_dim)),
                  np.random.default_rng(1).uniform(-1, 1, (40, task.action_dim)))
    grid = torch.linspace(0.05, 1, 20)
    assert torch.equal(pol.schedule.alpha(grid), VPSchedule.discrete_cosine(50).alpha(grid))
    assert not torch.allclose(pol.schedule.alpha(grid), VPSchedule.discrete_cosine(100).alpha(grid))
    obs, act = torch.randn(5, 2, task.obs_dim), torch.rand(5, 1, task.action_dim) * 1.6 - 0.8
    t, noise = pol.draw_noise(5, torch.device("cpu"))
    out = pol.compute_loss(obs, act, t=t, noise=noise)
    x0, cond = pol.act_norm(act), pol.cond(obs)
    a_t = pol.schedule.alpha(t)[:, None, None] * x0 + pol.schedule.sigma(t)[:, None, None] * noise
    with torch.no_grad():
        pred = pol.net(a_t, t, cond)
    terms = []
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda a: pol.net(a[None], t[i:i + 1], cond[i:i + 1])[0], a_t[i])
        J = J.reshape(task.action_dim, task.action_dim)
        terms.append(((J + J.T) / 2 + 0.1 * torch.eye(task.action_dim)).pow(2).mean())
    torch.testing.assert_close(out["denoise"], (pred - x0).pow(2).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["contraction"], torch.stack(terms).mean(), rtol=2e-3, atol=1e-6)
    s = train(ILTrainConfig(policy="cdp-mlp", form="official_frobenius", steps=2, batch_size=8, eval_every=2,
                            eval_episodes=1, **kw), tmp_path / "run", progress=False)
    back = load_policy(tmp_path / "run" / "policy").config
    assert s["step"] == 2 and (back.prediction, back.train_steps, back.contraction.form) == ("x0", 50, "official_frobenius")
    with pytest.raises(ValueError, match="prediction must be"):
        ILTrainConfig(policy="dp-mlp", **{**kw, "prediction": "score"})


def test_bcgmm_queue_takes_the_current_step():
    pol = BCGMM(BCGMMConfig(obs_keys=["x"], obs_dim=1, action_dim=1))
    pol.predict_chunk = lambda obs: obs[:, -1:, :1] * 10  # "action" = 10 x current observation
    pol.reset()
    assert [float(pol.select_action(np.array([float(i)]))[0]) for i in range(3)] == [0, 10, 20]


@pytest.mark.parametrize("kind", ["unet", "dit", "gmm", "dbc"])
def test_save_and_load_pretrained_round_trip(tmp_path, kind):
    base = dict(obs_keys=["agent_pos", "goals_touched"], obs_dim=5, action_dim=2)
    if kind == "gmm":
        pol = BCGMM(BCGMMConfig(**base, hidden=16))
    elif kind == "dbc":
        pol = DBC(DBCConfig(**base, hidden=16, dit_width=16, dit_depth=1))
    else:
        pol = DiffusionPolicy(DiffusionPolicyConfig(**base, backbone=kind, unet_dims=(8, 16), dit_width=16, dit_depth=1,
                                                    sample_steps=3))
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pol.set_stats(np.random.default_rng(0).normal(size=(50, 5)) * 3, np.random.default_rng(1).uniform(-2, 2, (50, 2)))
    pol.save_pretrained(tmp_path / "p")
    back = load_policy(tmp_path / "p")
    assert type(back) is type(pol) and back.config == pol.config
    obs = torch.randn(4, 2, 5)
    torch.manual_seed(0)
    a = pol.predict_chunk(obs)
    torch.manual_seed(0)
    assert torch.equal(back.predict_chunk(obs), a)
    assert torch.equal(back.act_norm.lo, pol.act_norm.lo) and torch.equal(back.obs_norm.hi, pol.obs_norm.hi)
    with pytest.raises(FileNotFoundError, match="no saved policy"):
        load_policy(tmp_path)


def test_windows_pad_at_the_demo_ends(reach_file):
    ds = read_robomimic(reach_file).subset(["demo_0"])
    demo = ds.demos["demo_0"]
    w = ChunkWindows(ds, ["agent_pos"], n_obs_steps=2, horizon=4, action_start=1)
    assert len(w) == len(demo)
    obs, act = w.batch(torch.tensor([0, len(demo) - 1]))
    assert torch.equal(obs[0, 0], obs[0, 1])  # step 0: history padded with the first observation
    assert torch.equal(act[0, 0], act[0, 1]) and torch.equal(act[0, 1], torch.as_tensor(demo.actions[0]))
    assert torch.equal(act[1, 1], torch.as_tensor(demo.actions[-1])) and torch.equal(act[1, 3], act[1, 1])


def test_a_windows_cut_keeps_a_seeded_share_of_all_demos_windows(reach_file):
    ds = read_robomimic(reach_file)
    w = ChunkWindows(ds, ["agent_pos"], n_obs_steps=2, horizon=4, action_start=1)
    cut = w.cut(0.1, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(len(w), int(0.1 * len(w)), replace=False))
    assert len(cut) == len(rows) == int(0.1 * len(w)) and w.cut(1.0, seed=3) is w
    for a, b in zip(cut.batch(torch.arange(len(cut))), w.batch(torch.as_tensor(rows))):
        assert torch.equal(a, b)  # the kept windows are those rows of the whole, in order
    demo_of = np.repeat(np.arange(len(ds.demos)), [len(d) for d in ds.demos.values()])  # window -> its demo
    # a tenth of the windows comes from most demos; a tenth of the demos would be 6 of 60
    assert len(set(demo_of[rows])) > 40 and len(ds.fraction(0.1, seed=3).demos) == 6
    assert not np.array_equal(rows, np.sort(np.random.default_rng(4).choice(len(w), len(rows), replace=False)))
    with pytest.raises(ValueError, match="fraction must be in"):
        w.cut(0.0, seed=0)


def test_a_windows_cut_run_trains_on_its_windows_with_the_whole_datas_normaliser(reach_file, tmp_path, monkeypatch):
    from cdp.il.normalize import MinMax

    seen = []
    real_batch = ChunkWindows.batch
    monkeypatch.setattr(ChunkWindows, "batch", lambda self, idx: seen.append((self, idx)) or real_batch(self, idx))
    kw = dict(policy="dp-mlp", task="reach", dataset=reach_file, batch_size=16, steps=3, eval_every=3,
              eval_episodes=1, fraction=0.2)
    cfg = ILTrainConfig(data_cut="windows", **kw)
    assert cfg.run_name() == "dp-mlp-f0.2-windows-s0"
    with pytest.raises(ValueError, match="data_cut must be one of"):
        ILTrainConfig(data_cut="episodes", **kw)
    train(cfg, tmp_path / "run", progress=False)
    ds = read_robomimic(reach_file)
    whole = ChunkWindows(ds, ["agent_pos"], n_obs_steps=2, horizon=16, action_start=1)
    trained = [(w, idx) for w, idx in seen if len(idx) == 16]  # the training batches (not the spread probe)
    assert trained and all(len(w) == int(0.2 * len(whole)) for w, _ in trained)
    policy = load_policy(tmp_path / "run" / "policy")
    keys = get_task("reach").obs_keys
    fitted = policy.obs_norm.state_dict()
    want = MinMax.fit(ChunkWindows(ds, keys, 2, 16, 1).obs_extremes()).state_dict()
    assert all(torch.equal(fitted[k], want[k]) for k in want)  # fitted on all the data, as the official runs
    demos_cut = MinMax.fit(ChunkWindows(ds.fraction(0.2, seed=0), keys, 2, 16, 1).obs_extremes()).state_dict()
    assert not all(torch.equal(fitted[k], demos_cut[k]) for k in want)  # (which a demos cut would not give)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["bc-gmm", "dp-unet", "cdp-dit", "dbc-dit"])
def test_trainer_run_folder_resume_and_loss_falls(reach_file, tmp_path, policy):
    kw = dict(policy=policy, task="reach", dataset=reach_file, batch_size=32, eval_every=30, eval_episodes=3,
              checkpoint_every=30, log_every=10, unet_dims=(8, 16), dit_width=16, dit_depth=1, sample_steps=2,
              lr=1e-3, contraction_subbatch=4, dbc_pretrain_steps=20)
    out = tmp_path / "run"
    s = train(ILTrainConfig(steps=30, **kw), out, progress=False)
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "eval.csv", "checkpoint.pt", "policy",
                                                "best", "summary.json", "curve.png", "tb"}
    assert 0 <= s["best"] <= 1 and s["evals"] == 1
    s = train(ILTrainConfig(steps=60, **kw), out, progress=False)  # resume with a larger budget
    assert [int(r["step"]) for r in csv.DictReader((out / "eval.csv").open())] == [30, 60]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(10, 61, 10))
    if policy != "dbc-dit":  # (dbc switches losses at step 20)
        assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    if policy.startswith("cdp"):
        assert all(np.isfinite(float(r["contraction"])) for r in rows)
        # the term's own stats on its 4-row sub-batch: the share above the floor is k / 4
        assert all(float(r["contraction_rows"]) == 4 and float(r["contraction_active"]) in (0, 0.25, 0.5, 0.75, 1)
                   for r in rows)
        from cdp.runlog import write_record

        term = json.loads(write_record(out, tmp_path / "rec.json").read_text())["term"]
        assert [t["step"] for t in term] == [30, 60] and all(0 <= t["active"] <= 1 for t in term)
    else:
        assert "contraction_active" not in rows[0]
    if policy == "dbc-dit":  # stage 1 trains the diffusion model only, stage 2 the policy only
        assert float(rows[0]["bc"]) == 0 and float(rows[0]["dm"]) > 0
        assert float(rows[-1]["dm"]) == 0 and float(rows[-1]["bc"]) > 0
    assert json.loads((out / "config.json").read_text())["policy"] == policy
    if policy == "dbc-dit":  # deterministic: the same chunk whatever the sampler seed
        assert s["action_spread_final"] == 0
    elif policy in ("dp-unet", "cdp-dit"):
        assert s["action_spread_final"] > 0
    res = evaluate(load_policy(out / "policy"), get_task("reach"), 2)
    assert 0 <= res["success_rate"] <= 1


def test_bad_input_fails_before_training(reach_file, tmp_path):
    with pytest.raises(ValueError, match="unknown policy"):
        ILTrainConfig(policy="dp-lstm", task="reach", dataset=reach_file)
    with pytest.raises(ValueError, match="unknown imitation task"):
        ILTrainConfig(policy="dp-unet", task="stack", dataset=reach_file)
    ds = read_robomimic(reach_file)
    for d in ds.demos.values():
        d.obs["agent_pos"] = d.obs["agent_pos"][:, :1]  # a 1-D position: wrong for the task
    bad = write_robomimic(tmp_path / "bad.hdf5", ds)
    with pytest.raises(DatasetError, match="'agent_pos' has shape \\(1,\\) in the dataset, task reach gives \\(2,\\)"):
        train(ILTrainConfig(policy="dp-unet", task="reach", dataset=str(bad), steps=1), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(FileNotFoundError):
        train(ILTrainConfig(policy="dp-unet", task="reach", dataset=str(tmp_path / "none.hdf5"), steps=1), tmp_path / "r")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(reach_file, tmp_path, monkeypatch):
    compute_loss, calls = BCGMM.compute_loss, []

    def nan_on_7th(self, obs, act):
        calls.append(1)
        out = compute_loss(self, obs, act)
        return {**out, "loss": out["loss"] * float("nan")} if len(calls) == 7 else out

    monkeypatch.setattr(BCGMM, "compute_loss", nan_on_7th)
    cfg = ILTrainConfig(policy="bc-gmm", task="reach", dataset=reach_file, steps=10, batch_size=16, eval_every=10,
                        eval_episodes=1, checkpoint_every=5, log_every=1)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(loss=nan\); last good checkpoint kept at"):
        train(cfg, out, progress=False)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["policy"].values())
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == list(range(1, 7))
    assert train(cfg, out, progress=False)["step"] == 10  # the 7th call is behind it: resumes from 5 and finishes
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == list(range(1, 11))


def signal_self(sig, times: int) -> None:
    """Send ``sig`` to this process ``times`` times, each once the installed handler has run for
    the one before: two signals sent back to back can reach Python as one (it keeps one pending
    flag per signal number), so a test of "the second signal" would otherwise test the first."""
    import os
    import signal
    import time

    handler, seen = signal.getsignal(sig), []

    def counting(signum, frame):
        seen.append(signum)
        handler(signum, frame)

    signal.signal(sig, counting)
    for i in range(times):
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 30
        while len(seen) <= i:  # the handler runs in this (main) thread, at the latest during the sleep
            assert time.monotonic() < deadline, f"no handler ran for signal {sig}"
            time.sleep(0.001)
    signal.signal(sig, handler)


def test_ctrl_c_twice_stops_at_once(reach_file, tmp_path, monkeypatch):
    import signal

    compute_loss, calls = BCGMM.compute_loss, []

    def int_twice_on_7th(self, obs, act):
        calls.append(1)
        if len(calls) == 7:
            signal_self(signal.SIGINT, 2)
        return compute_loss(self, obs, act)

    monkeypatch.setattr(BCGMM, "compute_loss", int_twice_on_7th)
    cfg = ILTrainConfig(policy="bc-gmm", task="reach", dataset=reach_file, steps=10, batch_size=16, eval_every=10,
                        eval_episodes=1, checkpoint_every=5, log_every=1)
    # Python's own Ctrl-C handler, whatever this process inherited (a shell's background job starts
    # with SIGINT ignored, and then a second Ctrl-C has nothing to fall back to)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "run", progress=False)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 5  # no save at 7


def test_resume_accepts_a_config_field_added_since_the_run_started(reach_file, tmp_path):
    kw = dict(policy="bc-gmm", task="reach", dataset=reach_file, batch_size=16, eval_every=5, eval_episodes=1,
              checkpoint_every=5, log_every=5)
    out = tmp_path / "run"
    train(ILTrainConfig(steps=5, **kw), out, progress=False)
    stored = json.loads((out / "config.json").read_text())
    del stored["dbc_pretrain_steps"]  # as written by an older version
    (out / "config.json").write_text(json.dumps(stored))
    train(ILTrainConfig(steps=10, **kw), out, progress=False)  # default value: same run
    with pytest.raises(ValueError, match="dbc_pretrain_steps"):
        train(ILTrainConfig(steps=15, dbc_pretrain_steps=7, **kw), out, progress=False)


def test_evaluation_in_groups_equals_all_at_once():
    """Rollouts run group after group on reused environments give the same result as all at once."""
    task = get_task("reach")
    pol = BCGMM(BCGMMConfig(obs_keys=task.obs_keys, obs_dim=task.obs_dim, action_dim=2, hidden=16))

    def pd_to_nearest_untouched_goal(obs):  # a scripted policy: succeeds, in an order set by the start
        p, v, touched = obs[:, -1, :2], obs[:, -1, 2:4], obs[:, -1, 4:]
        d = torch.cdist(p, torch.as_tensor(GOALS, dtype=p.dtype)) + 10 * touched
        g = torch.as_tensor(GOALS, dtype=p.dtype)[d.argmin(1)]
        return (10 * (g - p) - 20 * v).clamp(-1, 1)[:, None]

    pol.predict_chunk = pd_to_nearest_untouched_goal
    grouped = evaluate(pol, task, 7, seed=5, envs=[task.make_env() for _ in range(3)])
    whole = evaluate(pol, task, 7, seed=5, envs=[task.make_env() for _ in range(7)])
    assert grouped == whole and grouped["success_rate"] == 1.0 and grouped["modes"] >= 2


class _StagedToy:
    """A 5-step episode whose stage k holds at step k + 1 only, for the first ``seed % 4``
    stages: a rollout from seed s reaches ``s % 4`` stages, each for one step."""

    def reset(self, seed=None, options=None):
        self.n, self.t = seed % 4, 0
        return {"x": np.zeros(1, np.float32)}, {}

    def step(self, action):
        self.t += 1
        st = np.zeros(4, bool)
        if self.t - 1 < self.n:
            st[self.t - 1] = True
        return {"x": np.zeros(1, np.float32)}, 0.0, False, self.t >= 5, {"success": self.t == 5 and self.n == 3,
                                                                          "stages": st}


def test_evaluation_counts_stages_ever_reached(tmp_path):
    """``stages``: per rollout, the stages that held at some step (not at the end), averaged."""
    from cdp.il.tasks import TaskSpec

    task = TaskSpec("staged", _StagedToy, {"x": (1,)}, 1, 5, make_demos)
    pol = BCGMM(BCGMMConfig(obs_keys=["x"], obs_dim=1, action_dim=1, hidden=8))
    res = evaluate(pol, task, 7, seed=0, envs=[_StagedToy() for _ in range(3)])
    counts = np.array([s % 4 for s in range(7)])  # 0 1 2 3 0 1 2
    assert res["stages"] == pytest.approx(counts.mean())  # 9 / 7
    assert res["stages_se"] == pytest.approx(counts.std() / np.sqrt(7))
    assert res["success_rate"] == pytest.approx(1 / 7)  # seed 3 only
    from cdp.il.trainer import summarize

    for step, stages in ((1, 0.5), (2, 1.25)):  # the summary keeps the last evaluation's count
        append_csv(tmp_path / "eval.csv", {"step": step, "success_rate": 0.0, "stages": stages})
    assert summarize(tmp_path, 1.0, 1.0)["stages_final"] == 1.25
    reach = get_task("reach")
    plain = BCGMM(BCGMMConfig(obs_keys=reach.obs_keys, obs_dim=reach.obs_dim, action_dim=2, hidden=8))
    assert "stages" not in evaluate(plain, reach, 1)  # a task without stages reports none


class _Counted(MultiReach):
    """MultiReach that remembers being closed, and can be told to fail at it."""

    def __init__(self, fail_close: bool = False, **kw):
        super().__init__(**kw)
        self.closed, self.fail_close = False, fail_close

    def close(self):
        self.closed = True
        if self.fail_close:
            raise RuntimeError("close failed")


def test_environments_made_for_evaluation_are_closed_and_given_ones_are_left_open(reach_file, tmp_path, monkeypatch):
    import dataclasses

    import cdp.il.trainer as trainer

    made: list[_Counted] = []

    def make_env(**kw):
        made.append(_Counted(**kw))
        return made[-1]

    task = dataclasses.replace(get_task("reach"), make_env=make_env, eval_batch=2)
    monkeypatch.setattr(trainer, "get_task", lambda name: task)
    cfg = ILTrainConfig(policy="bc-gmm", task="reach", dataset=reach_file, steps=4, batch_size=8, eval_every=2,
                        eval_episodes=3, checkpoint_every=2)
    train(cfg, tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert len(made) == 2 and all(e.closed for e in made)  # made once, reused by both evaluations, closed at the end

    pol = load_policy(tmp_path / "run" / "policy")
    made.clear()
    evaluate(pol, task, 3)  # made here: closed here
    assert len(made) == 2 and all(e.closed for e in made)
    given = [_Counted(), _Counted()]
    evaluate(pol, task, 3, envs=given)  # the caller's: left open to be reused
    assert not any(e.closed for e in given)

    def second_fails(**kw):
        if made:
            raise RuntimeError("no second environment")
        return make_env(**kw)

    made.clear()
    with pytest.raises(RuntimeError, match="no second environment"):  # the one made before the failure is closed
        evaluate(pol, dataclasses.replace(task, make_env=second_fails), 3)
    assert len(made) == 1 and made[0].closed
    failing = [_Counted(fail_close=True), _Counted()]  # one close fails: the other is still closed, then it raises
    with pytest.raises(RuntimeError, match="close failed"):
        trainer.close_all(failing)
    assert all(e.closed for e in failing)


def test_reach_hard_variant():
    task = get_task("reach-hard")
    env = task.make_env()
    assert task.obs_dim == 8 and env.goals.shape == (4, 2) and task.horizon == 160
    a = [env.reset(seed=2)[0]["agent_pos"]] + [env.step(np.zeros(2))[0]["agent_pos"] for _ in range(5)]
    b = [env.reset(seed=2)[0]["agent_pos"]] + [env.step(np.zeros(2))[0]["agent_pos"] for _ in range(5)]
    assert np.array_equal(np.stack(a), np.stack(b))  # the pushes are part of the seeded episode
    assert not np.allclose(a[0], a[-1])  # and they move the mass even with zero action
    ds = task.make_demos(6, "ph", seed=0)
    assert len(ds.demos) == 6 and ds.env_args["env_kwargs"]["n_goals"] == 4
    assert all(d.obs["goals_touched"].shape[1] == 4 and d.dones[-1] for d in ds.demos.values())


@pytest.mark.parametrize("kind", ["unet", "dit", "mlp", "cdp-unet", "cdp-dit", "gmm", "dbc"])
def test_policies_make_every_tensor_on_their_inputs_device(kind):
    """Inside ``with torch.device("meta")`` a tensor made without an explicit device lands on
    meta and the first op mixing it with the CPU inputs fails, so passing means every tensor
    the loss and the sampler make follows the data's device (what a CUDA run needs)."""
    from cdp.contraction import ContractionConfig

    base = dict(obs_keys=["agent_pos", "goals_touched"], obs_dim=5, action_dim=2)
    if kind == "gmm":
        pol = BCGMM(BCGMMConfig(**base, hidden=16))
    elif kind == "dbc":
        pol = DBC(DBCConfig(**base, hidden=16, dit_width=16, dit_depth=1, pretrain_steps=1))
    else:
        term = ContractionConfig(gamma=0.1, subbatch=2) if kind.startswith("cdp") else None
        pol = DiffusionPolicy(DiffusionPolicyConfig(**base, backbone=kind.removeprefix("cdp-"), unet_dims=(8, 16),
                                                    dit_width=16, dit_depth=1, sample_steps=3, contraction=term))
    pol.set_stats(np.random.default_rng(0).normal(size=(50, 5)), np.random.default_rng(1).uniform(-1, 1, (50, 2)))
    To, Tp = pol.config.n_obs_steps, getattr(pol.config, "horizon", 1)
    obs, act = torch.randn(4, To, 5), torch.rand(4, Tp, 2) * 2 - 1
    for _ in range(2):  # dbc: past its first stage
        pol.compute_loss(obs, act)["loss"].backward()
    with torch.device("meta"):
        loss = pol.compute_loss(obs, act)
        loss["loss"].backward()
        chunk = pol.predict_chunk(obs)
        pol.reset()
        a = pol.select_action({"agent_pos": np.zeros((4, 2)), "goals_touched": np.zeros((4, 3))})
    assert all(v.device.type == "cpu" for v in loss.values()) and chunk.device.type == "cpu" and a.shape == (4, 2)
    assert pol.device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_error_before_anything_is_written(reach_file, tmp_path):
    kw = dict(policy="bc-gmm", task="reach", dataset=reach_file, batch_size=16, eval_every=5, eval_episodes=1,
              checkpoint_every=5, log_every=5)
    with pytest.raises(ValueError, match="device 'cuda' is not available here"):
        train(ILTrainConfig(steps=5, device="cuda", **kw), tmp_path / "gpu", progress=False)
    assert not (tmp_path / "gpu").exists()
    train(ILTrainConfig(steps=5, **kw), tmp_path / "run", progress=False)
    assert train(ILTrainConfig(steps=10, device="auto", **kw), tmp_path / "run", progress=False)["step"] == 10  # resumes elsewhere


def test_a_stop_signal_checkpoints_the_step_it_lands_on(reach_file, tmp_path, monkeypatch):
    import os
    import signal

    from cdp.runlog import RunInterrupted

    compute_loss, calls = BCGMM.compute_loss, []

    def term_on_7th(self, obs, act):
        calls.append(1)
        if len(calls) == 7:  # as a scheduler would, mid-step; twice, as a session's end can (the
            signal_self(signal.SIGTERM, 2)  # worker directly, then through its pool's death)
        return compute_loss(self, obs, act)

    monkeypatch.setattr(BCGMM, "compute_loss", term_on_7th)
    cfg = ILTrainConfig(policy="bc-gmm", task="reach", dataset=reach_file, steps=10, batch_size=16, eval_every=10,
                        eval_episodes=1, checkpoint_every=5, log_every=1)
    out, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at step 7; checkpoint saved"):
        train(cfg, out, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 7  # not 5: the step the signal landed on
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone with it
    assert train(cfg, out, progress=False)["step"] == 10
    assert [int(r["step"]) for r in csv.DictReader((out / "metrics.csv").open())] == list(range(1, 11))


def test_the_terms_estimator_is_a_run_setting_and_old_configs_keep_theirs(tmp_path):
    from dataclasses import asdict

    from cdp.io import config_from_json
    from cdp.report import load_runs

    base = dict(policy="cdp-unet", task="reach", dataset="unused.hdf5", fraction=0.1)
    cfg = ILTrainConfig(**base)
    c = cfg.contraction_config()
    assert (c.products, c.exact_max_dim) == ("auto", 256)  # the library's: exact up to 256 numbers
    assert cfg.run_name() == "cdp-unet-f0.1-auto-x256-s0"
    cfg = ILTrainConfig(**base, products="native", exact_max_dim=8)  # the earlier studies' Lanczos 4
    assert cfg.run_name() == "cdp-unet-f0.1-s0"
    # a config stored before the two keys existed ran Lanczos 4: read back, it still names that run
    stored = {k: v for k, v in asdict(cfg).items() if k not in ("products", "exact_max_dim")}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    back = config_from_json(ILTrainConfig, tmp_path / "config.json", "an imitation")
    assert (back.products, back.exact_max_dim, back.run_name()) == ("native", 8, "cdp-unet-f0.1-s0")
    rec = tmp_path / "results" / "reach" / "cdp-unet-f0.1-s0.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"config": stored, "summary": {"final": 0.5, "best": 0.5}, "eval": []}))
    assert [r.method for r in load_runs(tmp_path / "results")] == ["cdp-unet"]
    with pytest.raises(ValueError, match="products must be one of"):
        ILTrainConfig(**base, products="forward")


def test_a_demonstrator_that_keeps_failing_stops_with_one_error():
    from cdp.il.demos import collect_demos

    calls = []

    def fails_after_two(env, rng, op, seed):
        calls.append(seed)
        return demonstrate(env, rng, op, seed=seed) if len(calls) <= 2 else None

    with pytest.raises(RuntimeError, match=r"'better' demonstrator failed 5 attempts in a row .* after 2 of 3"):
        collect_demos(MultiReach(), fails_after_two, ["better"], 3, "ph", 0, {}, max_failures=5)
    assert len(calls) == 7 and calls == list(range(10_000, 10_007))  # 2 demos, then 5 failures on fresh seeds


def test_collected_demonstrations_count_the_failed_attempts_and_the_file_keeps_the_count(tmp_path):
    from cdp.data.robomimic import read_robomimic, write_robomimic
    from cdp.il.demos import collect_demos

    def fails_on_odd_seeds(env, rng, op, seed):
        return None if seed % 2 else demonstrate(env, rng, op, seed=seed)

    ds = collect_demos(MultiReach(), fails_on_odd_seeds, ["better"], 4, "ph", 0, {})
    # seeds 10000..10006: four successes on the even ones, three failures between them
    assert len(ds.demos) == 4 and ds.attempts == 7
    back = read_robomimic(write_robomimic(tmp_path / "d.hdf5", ds))
    assert back.attempts == 7 and back.subset(["demo_0"]).attempts is None
    ds.attempts = None  # robomimic's own files carry no count
    assert read_robomimic(write_robomimic(tmp_path / "e.hdf5", ds)).attempts is None


def test_an_interrupted_collection_continues_with_the_same_demonstrations(tmp_path):
    from cdp.il.demos import collect_demos
    from cdp.il.reach import OPERATORS
    from cdp.il.tasks import write_demos

    ops = list(OPERATORS)
    full = collect_demos(MultiReach(), demonstrate, ops, 6, "mh", 3, {})
    calls = []

    def stops_at_the_4th(env, rng, op, seed):
        calls.append(seed)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return demonstrate(env, rng, op, seed=seed)

    keep = tmp_path / "kept"
    with pytest.raises(KeyboardInterrupt):
        collect_demos(MultiReach(), stops_at_the_4th, ops, 6, "mh", 3, {}, keep=keep)
    assert sorted(p.name for p in keep.glob("demo_*.npz")) == ["demo_0.npz", "demo_1.npz", "demo_2.npz"]
    again = collect_demos(MultiReach(), demonstrate, ops, 6, "mh", 3, {}, keep=keep)
    assert list(again.demos) == list(full.demos) and again.masks == full.masks
    assert again.attempts == full.attempts == 6  # the reach demonstrator never fails
    for name, d in full.demos.items():
        e = again.demos[name]
        assert np.array_equal(d.actions, e.actions) and np.array_equal(d.rewards, e.rewards)
        assert all(np.array_equal(d.obs[k], e.obs[k]) for k in d.obs) and set(d.obs) == set(e.obs)
    with pytest.raises(ValueError, match="another call"):
        collect_demos(MultiReach(), demonstrate, ops, 7, "mh", 3, {}, keep=keep)
    with pytest.raises(ValueError, match="another call"):  # the same call in another environment
        collect_demos(MultiReach(), demonstrate, ops, 6, "mh", 3, {"env_kwargs": {"camera_render": "fast"}}, keep=keep)
    path = write_demos("reach", "ph", tmp_path / "reach_ph.hdf5", n=3)
    assert path.is_file() and not (tmp_path / "reach_ph.hdf5.partial").exists()


def test_windows_keep_camera_streams_as_uint8_and_give_the_same_batches():
    from cdp.data.robomimic import Demo, DemoDataset
    from cdp.il.normalize import MinMax

    g = np.random.default_rng(0)

    def demo(n):
        return Demo({"pos": g.normal(size=(n, 3)), "cam": g.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)},
                    g.normal(size=(n, 2)), np.zeros(n), np.zeros(n, bool))

    ds = DemoDataset({"demo_0": demo(5), "demo_1": demo(7)})
    w = ChunkWindows(ds, ["pos", "cam"], n_obs_steps=2, horizon=4, action_start=1)
    assert w.pixels.dtype == torch.uint8 and w.pixels.shape == (12, 48) and w.low.shape == (12, 3)
    table = np.concatenate([np.concatenate([d.obs["pos"], d.obs["cam"].reshape(len(d), -1)], -1)
                            for d in ds.demos.values()]).astype(np.float32)  # the float table, as it was
    idx = torch.tensor([0, 4, 5, 11])
    obs, act = w.batch(idx)
    assert torch.equal(obs, torch.as_tensor(table)[w.obs_idx[idx]]) and obs.dtype == torch.float32
    assert torch.equal(w.obs, torch.as_tensor(table))
    a, b = MinMax.fit(w.obs_extremes()), MinMax.fit(table)
    assert torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi)
    with pytest.raises(ValueError, match="must be the last obs_keys"):
        ChunkWindows(ds, ["cam", "pos"], n_obs_steps=2, horizon=4, action_start=1)
