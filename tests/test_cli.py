import json

import pytest

from cdp.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_its_outputs(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--steps", "30", "--eval-episodes", "4", "--toy-steps", "60",
            "--n-data", "64", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # part 1: both policies trained, evaluated and tabulated; part 2: the toy
    assert "| cdp-dit vs dp-dit |" in out and "| dp-dit | " in out and "cdp sweep experiments/imitation_reach_hard.toml" in out
    recs = sorted(p.name for p in (tmp_path / "results").rglob("*.json"))
    assert len(recs) == 2 and (tmp_path / "data" / "reach_ph.hdf5").is_file()
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "reach_reach_ph_bars.png").is_file()
    cfg = json.loads(next((tmp_path / "results").rglob("cdp-dit*.json")).read_text())["config"]
    assert cfg["fraction"] == 0.1 and cfg["contraction_subbatch"] == 16 and cfg["steps"] == 30
    assert "CDP (gamma=0.1, margin=0.1)" in out and "wrote" in out
    # part 2 trains alongside part 1 but prints after it: the two parts' lines do not interleave
    assert out.index("| cdp-dit vs dp-dit |") < out.index("training diffusion (gamma=0)") < out.index("demo done in")
    toy = tmp_path / "toy"
    summary = json.loads((toy / "summary.json").read_text())
    assert len(summary["runs"]) == 3
    config = json.loads((toy / "config.json").read_text())
    assert config["CDP (gamma=0.1, margin=0.1)"]["contraction"]["gamma"] == 0.1
    assert (toy / "demo.png").stat().st_size > 10_000
    assert not [p for p in toy.iterdir() if p.name.startswith(".")]  # no temp files left
    # a second run finds every job finished and only reports
    assert main(args) == 0
    assert "| cdp-dit vs dp-dit |" in capsys.readouterr().out


def test_demo_part_two_trains_while_part_one_still_runs(tmp_path, monkeypatch, capsys):
    import time

    import cdp.demo as demo

    seen = {}

    def part_one(out_dir, steps, eval_episodes, seeds, progress, on_done=None):
        first = demo.queue([demo.policy_sweep(out_dir, steps, eval_episodes, seeds)])[0]
        on_done(first)  # one of the two part-1 runs finished; the other still trains
        deadline = time.monotonic() + 120
        while not (tmp_path / "toy" / "summary.json").is_file():  # part 2 gets done meanwhile
            assert time.monotonic() < deadline, "part 2 did not start when a part-1 run finished"
            time.sleep(0.2)
        seen["toy_done_during_part_one"] = True
        return "part-1 tables"

    monkeypatch.setattr(demo, "run_policy_demo", part_one)
    summary = demo.run_demo(tmp_path, toy_steps=40, n_data=64, progress=False)
    assert seen and summary["policy_tables"] == "part-1 tables" and len(summary["runs"]) == 3
    out = capsys.readouterr().out
    assert out.index("part 2:") < out.index("training diffusion (gamma=0)")  # its lines printed after part 1


def test_bad_cli_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train"])
    for bad in ("0", "-3", "inf", "soft"):  # a temperature is 'argmax' or a number > 0
        with pytest.raises(SystemExit):
            main(["rl", "eval", "some/run", "--temperature", bad])
        assert "must be 'argmax' or a number > 0" in capsys.readouterr().err


def test_rl_cli_bad_task_is_one_clear_line(capsys):
    assert main(["rl", "train-behaviour", "Hoppper-v5", "--steps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cdp: error: unknown Gymnasium environment 'Hoppper-v5'")
    assert main(["rl", "make-data", "Hopper-v5", "novice"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quality must be one of" in err[0] and "'novice'" in err[0]
    assert main(["rl", "make-data", "kitchen", "expert"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kitchen quality must be one of ('complete', 'partial', 'mixed')" in err[0]


def test_a_q_weight_for_an_algorithm_without_a_q_term_or_out_of_range_is_one_line(capsys):
    for args, says in ((["bc", "--eta", "0.1"], "--eta weighs the actor's Q term of dql, edp, cdp; bc has none"),
                       (["edp", "--eta", "-1"], "eta (the Q term's weight) must be a finite number >= 0, got -1.0"),
                       (["cdp", "--eta", "nan"], "must be a finite number >= 0, got nan")):
        assert main(["rl", "train", *args, "--dataset", "cdp/kitchen/complete-v0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cdp: error: ") and says in err[0]


def test_the_help_and_import_cdp_do_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, cdp, cdp.cli\n"
            "for argv in (['--help'], ['il', 'train', '--help'], ['rl', 'train', '--help'], ['report', '--help']):\n"
            "    try:\n        cdp.cli.main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n"
            "from cdp import ContractionConfig\n"  # the core still loads on first use
            "assert 'torch' in sys.modules and ContractionConfig().gamma == 0.1\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: cdp il train" in out.stdout and "--fraction" in out.stdout
