"""Run-folder plumbing: appended rows keep their columns when the set of keys changes; one
process at a time trains a folder."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from cdp.runlog import RunBusy, append_csv, claim_run, drop_rows_after


def test_append_csv_keeps_columns_aligned(tmp_path):
    p = tmp_path / "eval.csv"
    append_csv(p, {"step": 1, "success": 0.5, "modes": 3})
    append_csv(p, {"step": 2, "success": 0.0})  # no modes this time: left empty, not shifted
    append_csv(p, {"step": 3, "modes": 2, "success": 1.0, "spread": 0.1})  # a new column: the file grows one
    rows = list(csv.DictReader(p.open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert [r["modes"] for r in rows] == ["3", "", "2"] and [r["success"] for r in rows] == ["0.5", "0.0", "1.0"]
    assert [r["spread"] for r in rows] == ["", "", "0.1"]
    drop_rows_after(p, 2)
    assert [r["step"] for r in csv.DictReader(p.open())] == ["1", "2"]


def test_a_claimed_run_folder_refuses_a_second_trainer_until_released(tmp_path):
    run = tmp_path / "runs" / "edp-f1-s0"
    with claim_run(run):
        assert (run / ".lock").is_file()
        with pytest.raises(RunBusy, match=f"pid {os.getpid()} on"):  # names the holder
            with claim_run(run):
                pass
    with claim_run(run):  # released on exit: the next trainer gets it
        pass


def test_a_killed_holder_leaves_no_stale_claim(tmp_path):
    run = tmp_path / "run"
    code = f"from pathlib import Path; from cdp.runlog import claim_run; import time\nwith claim_run(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=f"pid {proc.pid} on"):
            with claim_run(run):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while True:  # the OS drops the lock with the process
        try:
            with claim_run(run):
                break
        except RunBusy:
            assert time.time() < deadline, "the dead holder's claim should go with it"
            time.sleep(0.05)
