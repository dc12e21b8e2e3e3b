"""Franka Kitchen: the scripted demonstrator, D4RL's kitchen score, and datasets in Minari's
kitchen layout and D4RL's kitchen HDF5 layout."""

import h5py
import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")
minari = pytest.importorskip("minari")

from cdp.data import d4rl_reference, load_d4rl_hdf5, normalized_score  # noqa: E402
from cdp.data import kitchen  # noqa: E402
from cdp.data.kitchen import COMPLETE, DemoConfig, demonstrate, make_kitchen, task_done  # noqa: E402
from cdp.rl.trainer import check_spaces, load_dataset  # noqa: E402


def test_demonstrator_completes_the_four_subtasks_on_fixed_seeds():
    env = make_kitchen(COMPLETE, flat=False)
    done = [demonstrate(env, COMPLETE, seed=s)["completed"] for s in range(6)]
    rate = np.mean([len(d) == 4 for d in done])
    subtasks = np.mean([len(d) for d in done]) / 4
    print(f"kitchen demonstrator: all four subtasks in {rate:.0%} of 6 episodes, {subtasks:.0%} of subtasks")
    assert rate >= 0.5 and subtasks >= 0.75
    assert all(d == [t for t in COMPLETE if t in d] for d in done)  # whatever was done was done in order


def test_kitchen_score_is_subtasks_counted_by_hand():
    env = make_kitchen(COMPLETE, flat=False)
    ep = demonstrate(env, ("microwave", "light switch"), seed=0, config=DemoConfig(action_noise=0.0, jitter=0.0))
    # replay the actions on a fresh episode and count each subtask the first time its joints are
    # within 0.3 of the goal, independently of the environment's reward
    env.reset(seed=0)
    data, seen = env.unwrapped.data, set()
    for act in ep["actions"]:
        env.step(act)
        seen |= {t for t in COMPLETE if task_done(data, t)}
    assert seen == {"microwave", "light switch"} and sum(ep["rewards"]) == len(seen) == 2
    ref = d4rl_reference(kitchen.ENV_ID)
    assert (ref.random, ref.expert) == (0.0, 4.0)
    assert normalized_score(sum(ep["rewards"]), ref).value == pytest.approx(50.0)
    assert normalized_score(4, ref).value == 100.0


def test_dataset_in_minari_kitchen_layout_loads_with_its_flat_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    did = kitchen.make_kitchen_dataset("mixed", n_episodes=2, seed=3, progress=False)
    ds = minari.load_dataset(did)
    ep = next(iter(ds.iterate_episodes()))
    assert set(ep.observations) == {"observation", "achieved_goal", "desired_goal"}  # Minari's kitchen layout
    assert set(ep.observations["desired_goal"]) == set(COMPLETE) and ep.observations["observation"].shape[1] == 59
    assert ds.spec.env_spec.id == "FrankaKitchen-v1"
    data, env_id = load_dataset(did)
    assert env_id == kitchen.ENV_ID and data.obs_dim == 59 and data.act_dim == 9
    assert len(data) == ds.total_steps
    np.testing.assert_allclose(data.observations[: len(ep.actions)], ep.observations["observation"][:-1], rtol=0, atol=1e-6)
    assert data.rewards.sum() == sum(float(e.rewards.sum()) for e in ds.iterate_episodes())
    check_spaces(data, env_id)  # the flat environment the agents are evaluated in
    assert kitchen.env_for_tasks(["kettle", "microwave", "light switch", "bottom burner"]) == "cdp/kitchen-partial-v0"
    with pytest.raises(ValueError, match="no flat kitchen environment"):
        kitchen.env_for_tasks(["microwave"])


def test_mixed_never_and_complete_always_does_all_four():
    mixed = kitchen.episode_sequences("mixed", 40, seed=0)
    assert all(0 < len(s) < 4 and list(s) == [t for t in COMPLETE if t in s] for s in mixed)
    assert set(kitchen.episode_sequences("complete", 3, seed=0)) == {COMPLETE}
    partial = kitchen.episode_sequences("partial", 8, seed=0)
    assert sum(s == COMPLETE for s in partial) >= 2
    with pytest.raises(ValueError, match="kitchen quality"):
        kitchen.episode_sequences("expert", 3, seed=0)


def test_d4rl_kitchen_hdf5_layout_loads_and_names_the_space_mismatch(tmp_path):
    # D4RL's kitchen files: 60-dim observations (arm and object positions, then the goal), 9-dim actions
    n, path = 12, tmp_path / "kitchen-complete-v0.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as fh:
        fh["observations"] = rng.normal(size=(n, 60)).astype(np.float32)
        fh["actions"] = rng.uniform(-1, 1, size=(n, 9)).astype(np.float32)
        fh["rewards"] = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4], dtype=np.float32)
        fh["terminals"] = np.array([0] * 11 + [1], dtype=bool)
        fh["timeouts"] = np.zeros(n, dtype=bool)
    data = load_d4rl_hdf5(path)
    assert data.obs_dim == 60 and data.act_dim == 9 and len(data) == n and data.terminals[-1]
    with pytest.raises(ValueError, match="obs 60 / act 9 do not match cdp/kitchen-complete-v0's"):
        check_spaces(data, kitchen.ENV_ID)
