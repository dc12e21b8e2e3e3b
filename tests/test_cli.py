import json

import pytest

from cdp.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_its_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "60", "--n-data", "64", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "CDP (gamma=0.1, margin=0.1)" in out and "wrote" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["runs"]) == 3
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["CDP (gamma=0.1, margin=0.1)"]["contraction"]["gamma"] == 0.1
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_cli_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train"])


def test_rl_cli_bad_task_is_one_clear_line(capsys):
    assert main(["rl", "train-behaviour", "Hoppper-v5", "--steps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cdp: error: unknown Gymnasium task 'Hoppper-v5'")
    with pytest.raises(SystemExit):
        main(["rl", "make-data", "Hopper-v5", "novice"])
