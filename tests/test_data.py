import numpy as np
import pytest

from cdp.data import DatasetError, Transitions, d4rl_reference, normalized_score

h5py = pytest.importorskip("h5py")


def write_d4rl(path, with_next=False, nan=False, drop=None):
    """Two episodes in D4RL's layout: one ends terminal (3 steps), one by timeout (4 steps)."""
    obs = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    nxt = obs + 100
    data = {
        "observations": obs,
        "actions": np.linspace(-1, 1, 7 * 3, dtype=np.float32).reshape(7, 3),
        "rewards": np.arange(7, dtype=np.float32),
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 0, 0, 1], dtype=bool),
    }
    if with_next:
        data["next_observations"] = nxt
    if nan:
        data["rewards"][4] = np.nan
    if drop:
        del data[drop]
    with h5py.File(path, "w") as fh:
        for k, v in data.items():
            fh.create_dataset(k, data=v)
    return data


def test_d4rl_reader_without_next_observations(tmp_path):
    from cdp.data import load_d4rl_hdf5

    data = write_d4rl(tmp_path / "d.hdf5")
    tr = load_d4rl_hdf5(tmp_path / "d.hdf5")
    # the timeout row (last of episode 2) has no successor and is dropped; the terminal row stays
    assert len(tr) == 6 and tr.num_episodes == 2
    assert tr.episode.tolist() == [0, 0, 0, 1, 1, 1]
    assert tr.terminals.tolist() == [False, False, True, False, False, False]
    assert np.array_equal(tr.next_observations[:2], data["observations"][1:3])
    assert np.array_equal(tr.next_observations[3:], data["observations"][4:7])
    assert tr.observations.dtype == np.float32 and tr.terminals.dtype == bool
    assert tr.episode_returns().tolist() == [0 + 1 + 2, 3 + 4 + 5]


def test_d4rl_reader_with_next_observations_keeps_every_row(tmp_path):
    from cdp.data import load_d4rl_hdf5

    data = write_d4rl(tmp_path / "d.hdf5", with_next=True)
    tr = load_d4rl_hdf5(tmp_path / "d.hdf5")
    assert len(tr) == 7 and tr.timeouts[-1]
    assert np.array_equal(tr.next_observations, data["next_observations"])


def test_d4rl_reader_bad_files(tmp_path):
    from cdp.data import load_d4rl_hdf5

    with pytest.raises(DatasetError, match="not found"):
        load_d4rl_hdf5(tmp_path / "missing.hdf5")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        load_d4rl_hdf5(tmp_path / "junk.hdf5")
    write_d4rl(tmp_path / "nokey.hdf5", drop="timeouts")
    with pytest.raises(DatasetError, match=r"missing D4RL key\(s\) \['timeouts'\]"):
        load_d4rl_hdf5(tmp_path / "nokey.hdf5")
    write_d4rl(tmp_path / "nan.hdf5", nan=True)
    with pytest.raises(DatasetError, match="rewards contains NaN or inf"):
        load_d4rl_hdf5(tmp_path / "nan.hdf5")


def many_episodes(n=20, T=5):
    rng = np.random.default_rng(0)
    return Transitions.from_episodes([
        {"observations": rng.normal(size=(T + 1, 3)), "actions": rng.uniform(-1, 1, (T, 2)),
         "rewards": np.full(T, float(i)), "terminations": np.zeros(T), "truncations": np.eye(T)[-1]}
        for i in range(n)
    ])


def test_fraction_keeps_whole_trajectories_reproducibly():
    tr = many_episodes()
    a, b, c = tr.fraction(0.1, seed=1), tr.fraction(0.1, seed=1), tr.fraction(0.1, seed=2)
    assert a.num_episodes == 2 and len(a) == 10
    assert np.array_equal(a.episode, b.episode) and np.array_equal(a.observations, b.observations)
    assert not np.array_equal(np.unique(a.episode), np.unique(c.episode))
    # whole episodes: every kept episode has all of its 5 steps and its reward pattern
    for e in np.unique(a.episode):
        assert (a.episode == e).sum() == 5 and (a.rewards[a.episode == e] == e).all()
    assert tr.fraction(1.0).num_episodes == 20
    with pytest.raises(DatasetError, match="fraction"):
        tr.fraction(0.0)


def test_transitions_cut_keeps_the_share_of_transitions_from_across_the_dataset():
    tr = many_episodes()  # 20 episodes x 5 steps, reward = episode id
    a, b, c = (tr.fraction(0.3, seed=s, cut="transitions") for s in (1, 1, 2))
    assert len(a) == 30  # round(0.3 * 100) transitions
    assert np.array_equal(a.observations, b.observations) and not np.array_equal(a.observations, c.observations)
    assert a.num_episodes > 6  # from many episodes, not 6 whole ones
    # each kept row is an unchanged row of the original: (obs, reward) pairs match
    rows = {(tuple(o), r) for o, r in zip(tr.observations.tolist(), tr.rewards.tolist())}
    assert all((tuple(o), r) in rows for o, r in zip(a.observations.tolist(), a.rewards.tolist()))
    assert (np.diff(a.episode) >= 0).all()  # order kept
    # uniform over the dataset: over many seeds every transition is drawn about equally often
    counts = np.zeros(len(tr))
    index = {tuple(o): i for i, o in enumerate(tr.observations.tolist())}
    for s in range(400):
        for o in tr.fraction(0.3, seed=s, cut="transitions").observations.tolist():
            counts[index[tuple(o)]] += 1
    assert abs(counts.mean() - 120) < 1e-9 and counts.min() > 80 and counts.max() < 160
    with pytest.raises(DatasetError, match="keeps none"):
        tr.fraction(0.001, cut="transitions")
    with pytest.raises(DatasetError, match="data cut must be one of"):
        tr.fraction(0.5, cut="episodes")


def test_d4rl_normalised_scores():
    hop = d4rl_reference("hopper-medium-replay-v2")
    assert normalized_score(3234.3, hop).value == pytest.approx(100.0)
    assert normalized_score(-20.272305, hop).value == pytest.approx(0.0)
    assert normalized_score(1607.0139, hop).value == pytest.approx(50.0, abs=1e-4)
    assert d4rl_reference("Walker2d-v5").expert == 4592.3
    assert d4rl_reference("halfcheetah").random == -280.178953
    assert "D4RL" in str(normalized_score(0.0, hop))
    with pytest.raises(KeyError, match="no D4RL reference"):
        d4rl_reference("ant-medium-v2")


def test_minari_loader_and_its_own_reference(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector import EpisodeBuffer

    from cdp.data import load_minari, minari_reference

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1", max_episode_steps=6)
    buffers = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            act = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(act)
            for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"), (obs, act, r, term, trunc)):
                ep[k].append(v)
            done = term or trunc
        buffers.append(EpisodeBuffer(id=seed, infos={}, **ep))
    minari.create_dataset_from_buffers("cdp-test/pendulum/random-v0", buffers, env=env, eval_env=env.spec,
                                       algorithm_name="random", description="cdp test fixture",
                                       ref_min_score=-1500.0, ref_max_score=-150.0)
    tr = load_minari("cdp-test/pendulum/random-v0")
    assert len(tr) == 18 and tr.num_episodes == 3 and tr.timeouts.sum() == 3
    assert tr.obs_dim == 3 and tr.act_dim == 1
    ref = minari_reference("cdp-test/pendulum/random-v0")
    assert (ref.random, ref.expert) == (-1500.0, -150.0) and ref.source.startswith("minari:")
    with pytest.raises(DatasetError, match="not in the local store"):
        load_minari("cdp-test/pendulum/nothing-v0")
