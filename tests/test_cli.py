import json
import time

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


def test_demo_part_two_waits_for_a_free_core_and_is_skipped_when_part_one_fails():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from cdp.demo import _when

    free, cancelled, ran = threading.Event(), threading.Event(), []
    with ThreadPoolExecutor(2) as pool:
        later = pool.submit(_when, free.is_set, cancelled, pool, lambda x: ran.append(x) or x * 2, 21)
        time.sleep(0.3)
        assert not ran and not later.done()  # no core free yet: part 2 has not started
        free.set()
        assert later.result(timeout=10) == 42 and ran == [21]
        never = threading.Event()
        skipped = pool.submit(_when, never.is_set, cancelled, pool, ran.append, 0)
        cancelled.set()  # part 1 failed before a core came free
        assert skipped.result(timeout=10) is None and ran == [21]


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
