"""`cdp reproduce`: the bundled studies load, shrink as stated, and one runs end to end at a tiny
budget into its own folders, leaving a markdown page with its tables."""

import json

import pytest

from cdp.reproduce import STUDIES, Quick, reproduce, shrink, study_path
from cdp.sweep import load_sweep


def test_every_bundled_study_loads_and_shrinks_as_stated():
    for name in STUDIES:
        full = load_sweep(study_path(name))
        quick = shrink(full, Quick())
        assert quick.fixed["steps"] == max(200, full.fixed["steps"] // 25)
        assert quick.fixed["eval_every"] == quick.fixed["steps"] // 2 and quick.fixed["eval_episodes"] <= 10
        assert quick.grid["seed"] == [0] and len(full.grid["seed"]) >= 3  # the full studies have 3 seeds
        assert quick.out == full.out + "-quick" and quick.results == full.results + "-quick"
        assert {k: v for k, v in quick.grid.items() if k != "seed"} == {k: v for k, v in full.grid.items() if k != "seed"}
        assert len(quick.jobs()) * len(full.grid["seed"]) == len(full.jobs())
    bundled = {p.stem for p in study_path("offline_rl").parent.glob("*.toml")}
    # every study file is in the queue but the easier reach study (superseded by reach-hard)
    assert bundled - set(STUDIES) == {"imitation_reach"} and set(STUDIES) <= bundled
    with pytest.raises(FileNotFoundError, match="no bundled study 'nope'"):
        study_path("nope")
    with pytest.raises(ValueError, match="unknown study"):
        reproduce(quick=True, only=["nope"])


def test_shrink_keeps_the_first_seed_in_the_grid_and_in_each_arm(tmp_path):
    from cdp.reproduce import _scale_line

    p = tmp_path / "s.toml"
    p.write_text('kind = "rl"\nout = "o"\n[fixed]\ndataset = "a/b-v0"\nsteps = 5000\neval_every = 1000\n'
                 '[grid]\nfraction = [1.0, 0.1]\n[[arms]]\nalgo = "edp"\nseed = [0, 1, 2]\n'
                 '[[arms]]\nalgo = "cdp"\nseed = [4, 5]\ngamma = [0.1, 1.0]\n')
    full = load_sweep(p)
    quick = shrink(full, Quick())
    assert len(full.jobs()) == 2 * (3 + 2 * 2)
    assert [j.out.split("/")[-1] for j in quick.jobs()] == ["edp-f1-s0", "cdp-f1-s4", "cdp-f1-g1-s4",
                                                             "edp-f0.1-s0", "cdp-f0.1-s4", "cdp-f0.1-g1-s4"]
    assert "seed" not in quick.fixed and quick.fixed["steps"] == 200
    assert _scale_line(full).endswith("arms: algo ['edp'], seed [0, 1, 2]; algo ['cdp'], seed [4, 5], gamma [0.1, 1.0]")


@pytest.mark.slow
def test_reproduce_quick_runs_a_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = Quick(steps_divisor=1000, min_steps=20, evals=1, max_eval_episodes=2)
    page = reproduce(quick=True, only=["imitation_reach_hard"], workers=2, progress=False, quick_scale=tiny)
    assert page.resolve() == tmp_path / "results" / "reproduce-quick.md"
    text = page.read_text()
    assert "Quick mode" in text and "20 steps, seeds [0]" in text and "12 of 12 runs finished, 12 runs trained in this call" in text
    assert "| cdp-unet vs dp-unet |" in text and "| bc-gmm |" in text and "reach-hard/reach-hard_ph" in text
    assert (tmp_path / "data" / "il" / "reach-hard_ph.hdf5").is_file()
    assert len(list((tmp_path / "results" / "il-quick").rglob("*.json"))) == 12
    # resumable: a second call trains nothing
    reproduce(quick=True, only=["imitation_reach_hard"], workers=2, progress=False, quick_scale=tiny)
    assert "0 runs trained in this call" in page.read_text()


def test_cli_sweep_takes_a_bundled_study_by_name(capsys, tmp_path, monkeypatch):
    from cdp.cli import main

    monkeypatch.chdir(tmp_path)  # no experiments/ here: the name resolves inside the package
    assert main(["sweep", "offline_rl", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("todo     ") == 24 and "cdp_walker2d_medium-replay-v0/cdp-f0.1-s2" in out
    assert out.splitlines()[-1] == "0 done, 0 running, 0 stopped, 24 todo (of 24)"
    assert main(["sweep", "nope"]) == 2
    assert "no bundled study 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "--report-only", "--only", "offline_rl", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err and not (tmp_path / "results").exists()


def test_report_only_writes_the_page_from_the_records_and_trains_nothing(tmp_path, monkeypatch):
    from cdp.rl.trainer import TrainConfig

    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(study_path("offline_rl"))
    job = sweep.jobs()[0]
    rec = job.record_path()
    assert rec == TrainConfig(**job.config).record_path(sweep.results)
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"config": job.config, "summary": {"step": 50000, "final": 31.5, "best": 40.0,
                                                                  "metric": "d4rl_score_mean"},
                               "eval": [{"step": "50000", "d4rl_score_mean": "31.5"}]}))
    page = reproduce(only=["offline_rl", "offline_rl_baselines"], progress=False, report_only=True)
    text = page.read_text()
    assert "report only: 1 of 24 runs recorded" in text and "report only: 0 of 36 runs recorded" in text
    assert f"| 100% | {job.config['algo']} | 1 | 31.5 |" in text  # one seed: no standard error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing trained or made
    # where runs train is not part of them: asked for on a GPU, the CPU run's record still counts
    text = reproduce(only=["offline_rl"], progress=False, report_only=True, device="cuda").read_text()
    assert "report only: 1 of 24 runs recorded" in text and f"| 100% | {job.config['algo']} | 1 | 31.5 |" in text
