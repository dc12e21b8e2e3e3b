"""robomimic HDF5 layout: writer/reader round trip, a file written the way robomimic writes it,
and bad input."""

import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from cdp.data import DatasetError  # noqa: E402
from cdp.data.robomimic import Demo, DemoDataset, read_robomimic, write_robomimic  # noqa: E402


def make_dataset(n_demos=5, seed=0):
    rng = np.random.default_rng(seed)
    demos = {}
    for i in range(n_demos):
        n = int(rng.integers(5, 12))
        demos[f"demo_{i}"] = Demo(
            obs={"robot0_eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
                 "object": rng.normal(size=(n, 10)).astype(np.float32)},
            actions=rng.uniform(-1, 1, size=(n, 7)).astype(np.float32),
            rewards=(np.arange(n) == n - 1).astype(np.float32), dones=(np.arange(n) == n - 1),
            states=rng.normal(size=(n, 32)))
    return DemoDataset(demos, {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}},
                       {"train": ["demo_0", "demo_1", "demo_3"], "valid": ["demo_2", "demo_4"]})


def test_round_trip_and_layout(tmp_path):
    ds = make_dataset()
    p = write_robomimic(tmp_path / "low_dim.hdf5", ds)
    back = read_robomimic(p)
    assert list(back.demos) == list(ds.demos) and back.env_args == ds.env_args and back.masks == ds.masks
    for name, d in ds.demos.items():
        b = back.demos[name]
        assert all(np.array_equal(b.obs[k], d.obs[k]) for k in d.obs)
        assert np.array_equal(b.actions, d.actions) and np.array_equal(b.states, d.states)
        assert np.array_equal(b.rewards, d.rewards) and np.array_equal(b.dones, d.dones)
    with h5py.File(p, "r") as fh:  # robomimic's exact names and attribute types
        assert fh["data"].attrs["total"] == sum(len(d) for d in ds.demos.values())
        assert json.loads(fh["data"].attrs["env_args"])["env_name"] == "Lift"
        assert fh["data/demo_3"].attrs["num_samples"] == len(ds.demos["demo_3"])
        assert fh["data/demo_0/obs/robot0_eef_pos"].shape[1] == 3 and fh["data/demo_0/actions"].dtype == np.float32
        assert list(fh["mask/valid"][()]) == [b"demo_2", b"demo_4"]
    train = read_robomimic(p, obs_keys=["object"], filter_key="train")
    assert list(train.demos) == ["demo_0", "demo_1", "demo_3"] and train.obs_keys == ["object"]
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_reads_a_file_written_like_robomimic(tmp_path):
    p = tmp_path / "ph.hdf5"  # written directly: demo order by name (demo_10 after demo_2), next_obs, int dones
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as fh:
        data = fh.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "type": 1, "env_kwargs": {}})
        for i in (0, 2, 10):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = 4
            for k, dim in (("robot0_eef_pos", 3), ("object", 14)):
                g.create_dataset(f"obs/{k}", data=rng.normal(size=(4, dim)))
                g.create_dataset(f"next_obs/{k}", data=rng.normal(size=(4, dim)))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (4, 7)))
            g.create_dataset("rewards", data=np.array([0, 0, 0, 1.0]))
            g.create_dataset("dones", data=np.array([0, 0, 0, 1]))
            g.create_dataset("states", data=rng.normal(size=(4, 71)))
        fh.create_dataset("mask/20_percent", data=np.array([b"demo_10"]))
    ds = read_robomimic(p)
    assert list(ds.demos) == ["demo_0", "demo_2", "demo_10"] and ds.action_dim == 7
    assert ds.demos["demo_10"].actions.dtype == np.float32 and ds.demos["demo_2"].dones.tolist() == [0, 0, 0, 1]
    assert list(read_robomimic(p, filter_key="20_percent").demos) == ["demo_10"]
    ds.check_against({"robot0_eef_pos": (3,), "object": (14,)}, 7, "Can")
    with pytest.raises(DatasetError, match=r"'object' has shape \(14,\).*gives \(10,\)"):
        ds.check_against({"robot0_eef_pos": (3,), "object": (10,)}, 7, "Lift")
    with pytest.raises(DatasetError, match="lacks observation key"):
        ds.check_against({"cube_pos": (3,)}, 7, "Lift")
    with pytest.raises(DatasetError, match="7 dims, task Reach takes 2"):
        ds.check_against({"object": (14,)}, 2, "Reach")


def test_fraction_keeps_whole_demos_reproducibly():
    ds = make_dataset(n_demos=20)
    a, b = ds.fraction(0.1, seed=3), ds.fraction(0.1, seed=3)
    assert list(a.demos) == list(b.demos) and len(a.demos) == 2
    assert len({tuple(ds.fraction(0.1, seed=s).demos) for s in range(10)}) > 1  # the seed matters
    assert all(a.demos[n] is ds.demos[n] for n in a.demos)
    assert len(ds.fraction(0.01).demos) == 1 and ds.fraction(1.0) is ds


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no robomimic dataset"):
        read_robomimic(tmp_path / "none.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        read_robomimic(junk)
    ds = make_dataset(2)
    p = write_robomimic(tmp_path / "ok.hdf5", ds)
    with pytest.raises(DatasetError, match="lacks"):
        read_robomimic(p, obs_keys=["cube_pos"])
    with pytest.raises(DatasetError, match="no mask/20_percent"):
        read_robomimic(p, filter_key="20_percent")
    with h5py.File(p, "a") as fh:
        fh["data/demo_1/obs/object"][2, 4] = np.nan
    with pytest.raises(DatasetError, match="demo_1: obs/object has NaN or inf \\(first at row 2\\)"):
        read_robomimic(p)
