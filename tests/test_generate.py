"""Behaviour agent and dataset generation on a tiny budget (real SB3 training, real MuJoCo)."""

import json

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("minari")
pytest.importorskip("mujoco")


@pytest.mark.slow
def test_behaviour_snapshots_resume_and_datasets(tmp_path, monkeypatch, capsys):
    from cdp.data import Transitions, load_minari, minari_reference
    from cdp.data.behaviour import BehaviourConfig, load_snapshots, train_behaviour
    from cdp.data.generate import dataset_id, generate_episodes, make_dataset, pick_snapshots

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    agent = tmp_path / "agent"
    cfg = dict(env_id="Hopper-v5", snapshot_every=150, eval_episodes=1, learning_starts=100)
    snaps = train_behaviour(BehaviourConfig(total_steps=300, **cfg), agent, progress=False)
    assert [s.step for s in snaps] == [150, 300]
    # resume with a larger budget: continues from step 300, keeps the earlier snapshots
    snaps = train_behaviour(BehaviourConfig(total_steps=450, **cfg), agent, progress=False)
    assert [s.step for s in load_snapshots(agent)] == [150, 300, 450]
    assert all((agent / s.path).stat().st_size < 1_000_000 for s in snaps)
    with pytest.raises(ValueError, match="another config"):
        train_behaviour(BehaviourConfig(total_steps=450, **{**cfg, "seed": 1}), agent, progress=False)
    import shutil

    shutil.copytree(agent, tmp_path / "cloned", ignore=shutil.ignore_patterns(".resume"))  # as a fresh clone has it
    with pytest.raises(ValueError, match="no resume state"):
        train_behaviour(BehaviourConfig(total_steps=600, **cfg), tmp_path / "cloned", progress=False)

    assert pick_snapshots(snaps, "expert")[0].mean_return == max(s.mean_return for s in snaps)
    capsys.readouterr()
    eps = generate_episodes("Hopper-v5", "medium-replay", agent, 0, progress=True)
    medium = pick_snapshots(snaps, "medium")[0]
    n_replay = sum(len(e["actions"]) for e in eps)
    assert n_replay == 100 + 150 * (1 + [s.step for s in snaps].index(medium.step))
    assert f"{n_replay}/{n_replay}" in capsys.readouterr().err  # the bar's total is the buffer's, not n_steps

    did = make_dataset("Hopper-v5", "medium", agent, n_steps=400)
    assert did == dataset_id("Hopper-v5", "medium", "agent") == "cdp/hopper/medium-agent-v0"  # not the default agent
    tr = load_minari(did)
    assert isinstance(tr, Transitions) and len(tr) == 400 and tr.obs_dim == 11 and tr.act_dim == 3
    assert np.abs(tr.actions).max() <= 1.0
    ref = minari_reference(did)
    assert ref.expert == pytest.approx(max(s.mean_return for s in snaps)) and ref.source == "minari:cdp/hopper/medium-agent-v0"
    assert make_dataset("Hopper-v5", "medium", agent, n_steps=400) == did  # cached: not re-rolled
    assert json.loads((agent / "config.json").read_text())["total_steps"] == 450


def test_generation_shows_its_progress_over_the_transitions(tmp_path, capsys):
    from cdp.data.generate import generate_episodes

    eps = generate_episodes("Hopper-v5", "random", tmp_path, 130, progress=True)
    assert sum(len(e["actions"]) for e in eps) == 130
    err = capsys.readouterr().err
    assert "Hopper-v5 random" in err and "130/130" in err
    generate_episodes("Hopper-v5", "random", tmp_path, 20)
    assert capsys.readouterr().err == ""  # quiet unless asked


def test_bad_generation_input(tmp_path):
    from cdp.data.behaviour import BehaviourConfig, load_snapshots
    from cdp.data.generate import generate_episodes

    with pytest.raises(ValueError, match="quality"):
        generate_episodes("Hopper-v5", "novice", tmp_path, 10)
    with pytest.raises(FileNotFoundError, match="no behaviour agent"):
        load_snapshots(tmp_path)
    with pytest.raises(ValueError, match="algo"):
        BehaviourConfig(algo="PPO")
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        generate_episodes("Hoppper-v5", "random", tmp_path, 10)


def test_missing_agent_fails_before_the_bar(tmp_path, capsys):
    from cdp.data.generate import generate_episodes

    with pytest.raises(FileNotFoundError, match="no behaviour agent"):
        generate_episodes("Hopper-v5", "medium", tmp_path, 10, progress=True)
    assert "Hopper-v5 medium" not in capsys.readouterr().err  # the error line alone, no empty bar


@pytest.mark.slow
def test_halfcheetah_datasets_cut_never_ending_episodes_as_timeouts(tmp_path, monkeypatch):
    """HalfCheetah never terminates: every episode ends by a time limit (1000 steps) or by the
    generation budget, and both must read as timeouts, never as terminals (no bootstrapping cut)."""
    from cdp.data import d4rl_reference, load_minari
    from cdp.data.behaviour import BehaviourConfig, train_behaviour
    from cdp.data.generate import make_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    train_behaviour(BehaviourConfig(env_id="HalfCheetah-v5", total_steps=200, snapshot_every=100, eval_episodes=1,
                                    learning_starts=100), tmp_path / "agent", progress=False)
    tr = load_minari(make_dataset("HalfCheetah-v5", "medium", tmp_path / "agent", n_steps=2500))
    assert (len(tr), tr.obs_dim, tr.act_dim) == (2500, 17, 6)
    assert tr.terminals.sum() == 0 and tr.timeouts.sum() == 3  # cut at 1000, 2000 and the budget's 2500
    assert d4rl_reference("HalfCheetah-v5").source == "D4RL halfcheetah"


def test_datasets_of_another_agent_carry_its_name(tmp_path, monkeypatch):
    from cdp.data.generate import agent_tag, dataset_id

    monkeypatch.chdir(tmp_path)
    assert agent_tag("Walker2d-v5", None) is None
    assert agent_tag("Walker2d-v5", "data/agents/walker2d-v5-sac-s0") is None  # the default agent: short ids
    assert agent_tag("Walker2d-v5", "data/agents/walker2d-v5-sac-s1") == "sac-s1"
    assert agent_tag("Walker2d-v5", tmp_path / "long-run") == "long-run"
    assert dataset_id("Walker2d-v5", "medium-replay", "sac-s1") == "cdp/walker2d/medium-replay-sac-s1-v0"
    assert dataset_id("Walker2d-v5", "medium-replay") == "cdp/walker2d/medium-replay-v0"
    with pytest.raises(ValueError, match="cannot name a dataset"):
        agent_tag("Walker2d-v5", tmp_path / "my agent")


def test_recipe_inverts_the_dataset_ids_make_data_gives(tmp_path, monkeypatch):
    from cdp.data import kitchen
    from cdp.data.generate import DataRecipe, agent_tag, dataset_id, recipe
    from cdp.data.minari_io import load_minari
    from cdp.data.transitions import DatasetError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    for env_id in ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"):
        for quality in ("random", "medium", "medium-replay", "expert"):
            assert recipe(dataset_id(env_id, quality)) == DataRecipe(env_id, quality)
    assert recipe(kitchen.dataset_id("mixed")) == DataRecipe("kitchen", "mixed")
    # another agent's datasets: the agent's folder, when it is there
    assert recipe("cdp/walker2d/medium-replay-sac-s1-v0") is None
    agent = tmp_path / "data" / "agents" / "walker2d-v5-sac-s1"
    agent.mkdir(parents=True)
    (agent / "snapshots.json").write_text("[]")
    did = dataset_id("Walker2d-v5", "medium-replay", agent_tag("Walker2d-v5", agent))
    how = recipe(did)
    assert how == DataRecipe("Walker2d-v5", "medium-replay", "data/agents/walker2d-v5-sac-s1")
    assert how.command == "cdp rl make-data Walker2d-v5 medium-replay --agent data/agents/walker2d-v5-sac-s1"
    # names make-data never gives
    for other in ("D4RL/hopper/medium-replay-v2", "cdp/hopper/great-v0", "cdp/nosuchtask/medium-v0",
                  "cdp/kitchen/complete-v1", "cdp/kitchen/messy-v0", "cdp-test/hopper/random-v0"):
        assert recipe(other) is None, other
    # the loader's error says how to make a missing one, and only where it can be made
    with pytest.raises(DatasetError, match=r"not in the local store; local: \[\]; make it with "
                                           r"`cdp rl make-data Hopper-v5 medium-replay`$"):
        load_minari("cdp/hopper/medium-replay-v0")
    with pytest.raises(DatasetError, match=r"'D4RL/hopper/expert-v2' is not in the local store; local: \[\]$"):
        load_minari("D4RL/hopper/expert-v2")
