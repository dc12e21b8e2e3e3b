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
    assert not (run / ".lock").exists()  # a finished run folder keeps no lock file
    with claim_run(run):  # released on exit: the next trainer gets it
        pass


def test_a_lock_won_on_a_removed_lock_file_is_claimed_again(tmp_path, monkeypatch):
    """The holder removes .lock as it lets go; a trainer that opened the file just before that
    locks a file no path names any more, and must not think it holds the folder."""
    import fcntl

    run = tmp_path / "run"
    real_flock, calls = fcntl.flock, []

    def flock_after_the_holder_left(fd, op):
        calls.append(op)
        if len(calls) == 1:
            (run / ".lock").unlink()  # the previous holder releases between our open and our lock
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    with claim_run(run):
        assert len(calls) == 2  # the first lock was on the removed file: claimed again
        assert (run / ".lock").is_file()
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with pytest.raises(RunBusy):  # and the second one really holds the folder
            with claim_run(run):
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


def _holder_process(lock, made):
    """A process holding ``exclusive(lock)`` until told (a line on its stdin), which writes
    ``made`` before it lets go."""
    code = ("import sys; from pathlib import Path; from cdp.runlog import exclusive\n"
            f"with exclusive(Path({str(lock)!r}), 'x'):\n"
            "    print('held', flush=True); sys.stdin.readline()\n"
            f"    Path({str(made)!r}).write_bytes(b'made by the holder')")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("work", ["lock", "write_demos", "make_task_dataset"])
def test_a_second_maker_waits_for_the_first_and_takes_what_it_made(tmp_path, capsys, monkeypatch, work):
    """Two processes making one dataset: the second waits (saying for whom) and, for a dataset,
    takes the file the first wrote instead of collecting it again; `cdp rl make-data` (and a
    sweep making a Minari dataset) starts only once the other maker of that id let go."""
    import tempfile
    import threading

    from cdp.runlog import exclusive

    made = tmp_path / "reach_ph.hdf5"
    lock = {"write_demos": made.with_name(made.name + ".lock"), "lock": tmp_path / "make.lock",
            "make_task_dataset": tmp_path / "cdp-make-cdp_hopper_medium-v0.lock"}[work]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    proc = _holder_process(lock, made)
    seen = {}

    def second():
        if work == "lock":
            with exclusive(lock, "waiting for the first maker"):
                seen["made"] = made.read_bytes()
        elif work == "make_task_dataset":
            from cdp.data import generate

            monkeypatch.setattr(generate, "make_dataset", lambda *a: seen.update(made=made.read_bytes()) or "id")
            seen["path"] = generate.make_task_dataset("Hopper-v5", "medium")
        else:
            import dataclasses

            from cdp.il import tasks

            spec = dataclasses.replace(tasks.get_task("reach"), make_demos=lambda *a, **k: 1 / 0)  # must not collect
            monkeypatch.setattr(tasks, "get_task", lambda name: spec)
            seen["path"] = tasks.write_demos("reach", "ph", made, n=2, if_missing=True)
            seen["made"] = made.read_bytes()

    try:
        t = threading.Thread(target=second)
        t.start()
        deadline, out = time.time() + 30, ""
        while "waiting for" not in out:  # the second is blocked on the lock
            out += capsys.readouterr().out
            assert time.time() < deadline and t.is_alive() and "made" not in seen
            time.sleep(0.02)
        assert f"(held by pid {proc.pid} on" in out
        proc.stdin.write("go\n")
        proc.stdin.flush()
        t.join(30)
    finally:
        proc.kill()
        proc.wait()
    assert seen["made"] == b"made by the holder" and not lock.exists()
    if work == "write_demos":
        assert seen["path"] == made
    if work == "make_task_dataset":
        assert seen["path"] == "id"


def test_run_clock_adds_up_every_leg_of_a_resumed_run(monkeypatch):
    import cdp.runlog as runlog
    from cdp.runlog import RunClock

    now = [0.0]
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(runlog, "load_average", lambda: None)  # an OS without one: legs as before
    clock = RunClock(None, 0)
    now[0] = 3.0
    with clock.evaluating():
        now[0] = 5.0  # 2 s of evaluation
    now[0] = 10.0
    assert clock.per_1k_steps(100) == (100.0, 80.0)  # 10 s / 100 steps, 8 s of them training
    ckpt = clock.state(100)
    assert ckpt == {"clock": {"wall": 10.0, "eval": 2.0, "legs": [{"from": 0, "to": 100, "where": "", "seconds": 10.0}]}}
    now[0] = 50.0  # a new process resumes from that checkpoint
    resumed = RunClock(ckpt, 100, "cuda on gpu-host")
    now[0] = 55.0
    assert resumed.per_1k_steps(150) == (100.0, pytest.approx(1000 * 13 / 150))  # 15 s over all 150 steps
    assert resumed.legs(150) == [{"from": 0, "to": 100, "where": "", "seconds": 10.0},
                                 {"from": 100, "to": 150, "where": "cuda on gpu-host", "seconds": 5.0}]
    old = RunClock({"agent": {}}, 100, "cpu on here")  # a checkpoint from before the clock: this leg's rate for all steps
    now[0] = 60.0
    assert old.per_1k_steps(150) == (pytest.approx(100.0), pytest.approx(100.0))
    assert old.state(150) == {"clock": {"wall": pytest.approx(15.0), "eval": 0.0, "legs": [
        {"from": 0, "to": 100, "where": "unknown", "seconds": None},
        {"from": 100, "to": 150, "where": "cpu on here", "seconds": 5.0}]}}
    legacy = RunClock({"clock": {"wall": 10.0, "eval": 2.0}}, 100, "cpu on here")  # a clock from before the legs
    assert legacy.legs(100) == [{"from": 0, "to": 100, "where": "unknown", "seconds": None}]


def test_where_label_names_the_device_and_host():
    import socket

    from cdp.runlog import where_label

    import torch

    label = where_label("cpu")
    assert label.startswith("cpu (") and label.endswith(f") on {socket.gethostname()}")
    assert torch.backends.cpu.get_cpu_capability() in label  # the vector ISA torch's kernels use


def test_a_leg_keeps_the_mean_machine_load_of_its_readings(monkeypatch):
    import cdp.runlog as runlog
    from cdp.runlog import RunClock

    readings = iter([1.0, 3.0, 2.5])
    monkeypatch.setattr(runlog, "load_average", lambda: next(readings))
    monkeypatch.setattr(runlog.os, "cpu_count", lambda: 2)
    clock = RunClock({"clock": {"wall": 10.0, "eval": 0.0, "legs": [{"from": 0, "to": 100, "where": "a", "seconds": 10.0}]}},
                     100, "b")
    clock.state(200)  # a checkpoint: reads 1.0
    assert clock.legs(300)[-1]["load"] == 2.0  # (1 + 3) / 2
    last = clock.legs(400)
    assert last[-1] | {"seconds": 0} == {"from": 100, "to": 400, "where": "b", "seconds": 0, "load": 2.17, "cores": 2}
    assert "load" not in last[0]  # an earlier process's leg is kept as it was written
