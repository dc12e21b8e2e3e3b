"""Bad input, untrusted run folders and races: one clear line naming the file or option, no code
run from a run folder, nothing half-written, nothing stale trusted."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py")

from cdp.cli import main  # noqa: E402
from cdp.data import DatasetError  # noqa: E402
from cdp.data.robomimic import read_robomimic, write_robomimic  # noqa: E402
from cdp.il.reach import make_demos  # noqa: E402
from cdp.il.trainer import ILTrainConfig, train as il_train  # noqa: E402
from cdp.runlog import CheckpointError, RunFinished, load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def reach(tmp_path_factory):
    return str(write_robomimic(tmp_path_factory.mktemp("rel") / "reach_ph.hdf5", make_demos(20, "ph", seed=0)))


def il_cfg(reach, **kw):
    base = dict(policy="bc-gmm", task="reach", dataset=reach, steps=4, batch_size=8, eval_every=4, eval_episodes=1,
                checkpoint_every=2, log_every=2)
    return ILTrainConfig(**{**base, **kw})


def one_line_error(capsys, code, expected_code=2) -> str:
    import re

    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    lines = [ln for ln in err.splitlines() if not re.search(r"\d+/\d+ \[", ln)]  # progress bars aside
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


class WritesAFile:
    """Unpickling this calls Path.touch(marker): code from the file, run by a plain torch.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# --------------------------------------------------------------------------- security
def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algo": "edp", "dataset": "x", "env_id": "Hopper-v5"}))
    torch.save({"agent": WritesAFile(str(marker))}, run / "checkpoint.pt")
    torch.load(run / "checkpoint.pt", weights_only=False)  # the file does what it claims to a plain load
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="safe load refuses"):
        load_checkpoint(run / "checkpoint.pt")
    err = one_line_error(capsys, main(["rl", "eval", str(run)]))
    assert str(run / "checkpoint.pt") in err and not marker.exists()


def test_a_module_env_id_imports_nothing(tiny_dataset, tmp_path, capsys):
    sys.modules.pop("this", None)
    code = main(["rl", "train", "bc", "--dataset", tiny_dataset, "--env", "this:Foo-v0", "--out", str(tmp_path / "r")])
    err = one_line_error(capsys, code)
    assert "'this:Foo-v0'" in err and "this" not in sys.modules and not (tmp_path / "r").exists()
    err = one_line_error(capsys, main(["rl", "train", "bc", "--dataset", tiny_dataset, "--env", "NoSuchEnv-v0"]))
    assert "unknown Gymnasium environment 'NoSuchEnv-v0'" in err


# --------------------------------------------------------------------------- one line, naming the file
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_a_truncated_or_empty_checkpoint_is_one_line_naming_it(reach, tmp_path, capsys, content):
    out = tmp_path / "run"
    args = ["il", "train", "bc-gmm", "--task", "reach", "--dataset", reach, "--batch-size", "8", "--eval-every", "6",
            "--eval-episodes", "1", "--out", str(out)]
    assert main([*args, "--steps", "3"]) == 0
    capsys.readouterr()
    (out / "checkpoint.pt").write_bytes(content)
    err = one_line_error(capsys, main([*args, "--steps", "6"]))
    assert f"{out / 'checkpoint.pt'} is not a readable checkpoint" in err


def test_the_official_imitation_options_reach_the_run_and_a_bad_one_is_one_line(reach, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["il", "train", "cdp-mlp", "--task", "reach", "--dataset", reach, "--batch-size", "8", "--steps", "2",
            "--eval-every", "2", "--eval-episodes", "1", "--horizon", "1", "--n-action-steps", "1",
            "--chunk-start", "current", "--prediction", "x0", "--diffusion-steps", "50", "--form", "official_frobenius",
            "--lr", "1e-3", "--subbatch", "4", "--out", str(out)]
    assert main([*args, "--ema-max", "0.995"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg[k] for k in ("prediction", "diffusion_steps", "form", "lr", "contraction_subbatch", "ema_max")} == \
        {"prediction": "x0", "diffusion_steps": 50, "form": "official_frobenius", "lr": 1e-3, "contraction_subbatch": 4,
         "ema_max": 0.995}
    capsys.readouterr()
    bad = tmp_path / "bad"
    err = one_line_error(capsys, main([*args[:-1], str(bad), "--ema-max", "1"]))
    assert "ema_max must be in [0, 1), got 1.0" in err and not bad.exists()


def test_bad_weights_and_seed_name_the_option_before_anything_is_written(tiny_dataset, tmp_path, capsys):
    for flag, value in (("--gamma", "inf"), ("--margin", "nan"), ("--gamma", "-1")):
        code = main(["rl", "train", "cdp", "--dataset", tiny_dataset, flag, value, "--out", str(tmp_path / "r")])
        assert flag[2:] in one_line_error(capsys, code) and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        main(["rl", "train", "bc", "--dataset", tiny_dataset, "--seed", "-1"])
    assert e.value.code == 2 and "argument --seed: must be an integer >= 0" in capsys.readouterr().err


def test_a_loss_that_is_never_finite_says_there_is_no_checkpoint_and_leaves_no_folder(reach, tmp_path, capsys,
                                                                                      monkeypatch):
    from cdp.il.bcgmm import BCGMM

    compute_loss = BCGMM.compute_loss

    def nan_from_the_start(self, obs, act):  # as observations of 1e30 give
        out = compute_loss(self, obs, act)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(BCGMM, "compute_loss", nan_from_the_start)
    out = tmp_path / "run"
    code = main(["il", "train", "bc-gmm", "--task", "reach", "--dataset", reach, "--steps", "4", "--batch-size", "8",
                 "--out", str(out)])
    err = one_line_error(capsys, code, expected_code=1)
    assert "non-finite loss at step 1" in err and "no checkpoint was written yet" in err
    assert not out.exists()  # a run that never got going leaves nothing behind


def test_eval_of_the_other_kind_of_run_and_broken_configs_name_the_file(reach, tmp_path, capsys):
    out = tmp_path / "il-run"
    il_train(il_cfg(reach), out, progress=False)
    err = one_line_error(capsys, main(["rl", "eval", str(out)]))
    assert f"{out / 'config.json'}: not the config of an offline-RL run" in err
    rl_like = tmp_path / "rl-run"
    rl_like.mkdir()
    (rl_like / "config.json").write_text(json.dumps({"algo": "bc", "dataset": "x", "env_id": "Hopper-v5"}))
    (rl_like / "policy").mkdir()
    err = one_line_error(capsys, main(["il", "eval", str(rl_like)]))
    assert "not the config of an imitation run" in err
    (rl_like / "checkpoint.pt").write_bytes(b"")
    (rl_like / "config.json").write_text('{"algo": "bc",')  # a syntax error
    assert f"{rl_like / 'config.json'}: not a valid JSON run config" in one_line_error(capsys, main(["rl", "eval", str(rl_like)]))


def test_a_broken_record_or_summary_is_named(tmp_path, capsys):
    from cdp.report import load_runs

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.json").write_text('{"config": {}, "summary": {"step": 1}}')
    with pytest.raises(ValueError, match=r"a\.json: a record with an empty or malformed config"):
        load_runs(tmp_path)
    (tmp_path / "g" / "a.json").write_text('{"config": {"al\x01go"')
    with pytest.raises(ValueError, match=r"a\.json: not a valid JSON run record"):
        load_runs(tmp_path)


def test_sweep_values_of_the_wrong_type_are_refused_before_any_run(tmp_path):
    from cdp.sweep import load_sweep

    cases = {'steps = "200"': "steps = '200' is not of type int",
             "seed = [0.5, 1]": "seed = 0.5 is not of type int"}
    for line, msg in cases.items():
        key = line.split(" = ")[0]
        grid = line if key == "seed" else "seed = [0]"
        fixed = "" if key == "seed" else line
        p = tmp_path / f"{key}.toml"
        p.write_text(f'kind = "rl"\nout = "{tmp_path / "runs"}"\n[fixed]\ndataset = "d"\nalgo = "bc"\n{fixed}\n[grid]\n{grid}\n')
        with pytest.raises(ValueError, match=f"{p.name}: {msg}".replace("[", r"\[").replace("(", r"\(")):
            load_sweep(p)
    p = tmp_path / "il.toml"
    p.write_text(f'kind = "il"\nout = "{tmp_path / "runs"}"\n[fixed]\ntask = "reach"\ndataset = "d"\n'
                 'policy = "dp-unet"\nunet_dims = "abc"\n[grid]\nseed = [0]\n')
    with pytest.raises(ValueError, match=r"unet_dims = 'abc' is not of type tuple\[int, \.\.\.\]"):
        load_sweep(p)
    assert not (tmp_path / "runs").exists()


def test_a_failing_sweep_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    p = tmp_path / "s.toml"
    p.write_text(f'kind = "rl"\nout = "{tmp_path / "runs"}"\nworkers = 1\n[fixed]\ndataset = "no/such/data-v0"\n'
                 'algo = "bc"\nsteps = 2\n[grid]\nseed = [0, 1]\n')
    code = main(["sweep", str(p)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("cdp: error: 2 of 2 jobs failed") and not any("Traceback" in e for e in err)


# --------------------------------------------------------------------------- data files
def test_robomimic_files_with_broken_metadata_are_named(tmp_path):
    import h5py

    path = write_robomimic(tmp_path / "d.hdf5", make_demos(3, "ph", seed=0))
    with h5py.File(path, "a") as fh:
        fh["data"].attrs["env_args"] = "{not json"
    with pytest.raises(DatasetError, match=r"d\.hdf5: data.attrs\['env_args'\] is not valid JSON"):
        read_robomimic(path)
    path = write_robomimic(tmp_path / "m.hdf5", make_demos(3, "ph", seed=0))
    with h5py.File(path, "a") as fh:
        fh.create_dataset("mask/broken", data=np.array([b"demo_0", b"demo_99"]))
    with pytest.raises(DatasetError, match=r"m\.hdf5: mask/broken lists \['demo_99'\], which data/ does not hold"):
        read_robomimic(path, filter_key="broken")
    with pytest.raises(DatasetError, match="one step; a demonstration needs at least 2"):  # the writer refuses one
        demos = make_demos(2, "ph", seed=0)
        one = next(iter(demos.demos.values()))
        one.obs, one.actions = {k: v[:1] for k, v in one.obs.items()}, one.actions[:1]
        one.rewards, one.dones = one.rewards[:1], one.dones[:1]
        one.states = None
        write_robomimic(tmp_path / "w.hdf5", demos)
    path = write_robomimic(tmp_path / "short.hdf5", make_demos(2, "ph", seed=0))
    with h5py.File(path, "a") as fh:  # cut demo_0 to one step in the file itself, as another writer could
        g = fh["data/demo_0"]
        names = []
        g.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            first = g[name][:1]
            del g[name]
            g.create_dataset(name, data=first)
    with pytest.raises(DatasetError, match="one step; a demonstration needs at least 2"):
        read_robomimic(path)


# --------------------------------------------------------------------------- nothing stale trusted
def test_resuming_on_changed_data_is_refused(tmp_path):
    data = tmp_path / "reach.hdf5"
    write_robomimic(data, make_demos(20, "ph", seed=0))
    out = tmp_path / "run"
    il_train(il_cfg(str(data)), out, progress=False)
    write_robomimic(data, make_demos(20, "ph", seed=1))  # replaced by other demonstrations
    with pytest.raises(ValueError, match="trained on other data"):
        il_train(il_cfg(str(data), steps=8), out, progress=False)
    write_robomimic(data, make_demos(20, "ph", seed=0))  # the same data again: resumes
    assert il_train(il_cfg(str(data), steps=8), out, progress=False)["step"] == 8


def test_a_finished_run_is_not_reentered_by_a_second_sweep(reach, tmp_path):
    out = tmp_path / "run"
    il_train(il_cfg(reach), out, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunFinished, match="finished by another process"):
        il_train(il_cfg(reach), out, progress=False, reenter=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # untouched


def test_a_relative_and_an_absolute_dataset_path_are_one_run(reach, tmp_path, monkeypatch):
    from cdp.rl.trainer import TrainConfig

    monkeypatch.chdir(Path(reach).parent)
    rel, absolute = Path(reach).name, reach
    assert TrainConfig(algo="bc", dataset=rel).dataset_slug() == TrainConfig(algo="bc", dataset=absolute).dataset_slug()
    out = tmp_path / "run"
    il_train(il_cfg(rel), out, progress=False)
    assert il_train(il_cfg(absolute, steps=6), out, progress=False)["step"] == 6  # the same run, resumed


def test_make_data_refuses_to_keep_a_dataset_of_another_size(tmp_path, monkeypatch):
    from cdp.data.generate import make_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    did = make_dataset("Hopper-v5", "random", tmp_path / "no-agent", n_steps=120)
    assert make_dataset("Hopper-v5", "random", tmp_path / "no-agent", n_steps=120) == did  # same: kept
    with pytest.raises(ValueError, match=f"{did} is in the local store with 120 transitions, not the 200"):
        make_dataset("Hopper-v5", "random", tmp_path / "no-agent", n_steps=200)
