"""Run-folder plumbing shared by the trainers: the claim on a folder while it trains, CSV rows (and
their TensorBoard twin) that survive a resume without duplicates, atomic checkpoints, the
non-finite-loss stop, and the learning-curve plot."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .io import atomic_write


class RunBusy(RuntimeError):
    """Another live process is training this run folder."""


@contextmanager
def claim_run(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``folder/.lock`` while a run trains, so two
    processes never train one folder at once (a sweep started twice, two machines sharing the
    runs, a sweep and a ``cdp rl train``). Raises :class:`RunBusy`, naming the holder, when the
    folder is taken. The OS drops the lock when its holder exits, however it exits, so a killed
    run never leaves a stale claim behind. Without ``fcntl`` (Windows) runs are not claimed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    with _held(path, _lock_exclusive(path, fcntl)):
        yield


@contextmanager
def exclusive(path: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` (created, and removed
    again before it is let go), waiting while another process holds it and printing ``waiting``
    once if it has to: for work two processes must not do at once, such as making one dataset
    (two sweeps started together on a fresh clone). Without ``fcntl`` (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held(path, _lock_exclusive(path, fcntl, waiting)):
        yield


@contextmanager
def _held(path: Path, fd: int) -> Iterator[None]:
    """Write who holds the lock on ``fd`` into it (for the messages; the lock itself is the
    flock); on the way out remove ``path`` while still held, then let go."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # a finished run folder keeps no lock file
        os.close(fd)  # releases the lock


def _lock_exclusive(path: Path, fcntl, waiting: str | None = None) -> int:
    """An fd holding an exclusive ``flock`` on ``path``, the file created if missing. Taken:
    :class:`RunBusy` naming the holder, or with ``waiting`` that message printed once and the lock
    waited for. The holder removes the file before it lets go, so a lock won on a file already
    removed is worthless: the path is checked to still name the locked file, and the claim retried
    when it does not."""
    busy, told = 0, False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is None:
                busy += 1  # a status probe (run_holder) holds it for microseconds: try again
                if busy == 3:
                    holder = _holder(fd)
                    os.close(fd)
                    raise RunBusy(f"{path.parent} is being trained by {holder}; wait for it, or stop it first") from None
                os.close(fd)
                time.sleep(0.05)
                continue
            if not told:
                print(f"{waiting} (held by {_holder(fd)})", flush=True)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed it between our open and our lock


def finished_in_folder(out: Path, steps: int) -> dict | None:
    """The run folder's ``summary.json`` if it says the run reached ``steps``, else None (also
    for a damaged one: the run rewrites it from its checkpoint when it ends)."""
    from .io import read_json

    try:
        summary = read_json(out / "summary.json", "run summary")
    except (FileNotFoundError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("step", -1) >= steps else None


class RunFinished(RunBusy):
    """The run folder holds a finished run (another process finished it meanwhile)."""


@contextmanager
def open_run(out: Path, config: dict, read_stored: Callable[[dict], dict], data_fingerprint: str,
             reenter: bool = True) -> Iterator[None]:
    """Claim run folder ``out`` (:func:`claim_run`) and check it before training: its stored
    config must match ``config`` (the budget may grow), and the data it trained on must be
    ``data_fingerprint`` (``data.json``): resuming on data that changed since would mix two
    datasets in one run. With ``reenter=False`` a run already finished at its budget raises
    :class:`RunFinished` (a sweep started twice: the other finished it), leaving it untouched.
    A folder this call created is removed again if training fails before its first checkpoint."""
    from .io import read_json, save_or_check_config

    fresh = not out.exists()
    with claim_run(out):
        try:
            if not reenter and finished_in_folder(out, config["steps"]) is not None:
                raise RunFinished(f"{out} was finished by another process meanwhile")
            save_or_check_config(out, config, budget_key="steps", read_stored=read_stored)
            seen = out / "data.json"
            if seen.is_file():
                before = read_json(seen, "data record")
                if isinstance(before, dict) and before.get("fingerprint") != data_fingerprint:
                    raise ValueError(f"{out} trained on other data (fingerprint {before.get('fingerprint')}) than "
                                     f"{config.get('dataset')} gives now ({data_fingerprint}): the dataset changed; "
                                     "train in a new folder, or restore the data")
            else:
                atomic_write(seen, json.dumps({"fingerprint": data_fingerprint}).encode())
            yield
        except BaseException as e:
            if fresh and not (out / "checkpoint.pt").exists() and not isinstance(e, RunFinished):
                shutil.rmtree(out, ignore_errors=True)  # nothing of a run that never got going stays behind
            raise


def run_holder(folder: Path) -> str | None:
    """Who is training ``folder`` right now (``"pid P on HOST since T"``), or None when no live
    process holds its claim. Probes with a shared lock taken and dropped at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """What the claim's holder wrote in the lock file (``"pid P on HOST since T"``)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def append_csv(path: Path, row: dict) -> None:
    """Append ``row`` to ``path`` under the file's header: keys the row lacks stay empty; keys the
    header lacks (a column added since the run started) extend it, the file rewritten atomically."""
    if not path.is_file():
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)
        return
    with path.open(newline="") as fh:
        header = next(csv.reader(fh), [])
    extra = [k for k in row if k not in header]
    if extra:
        rows = list(csv.DictReader(path.open(newline="")))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header + extra, restval="")
        w.writeheader()
        w.writerows(rows + [row])
        atomic_write(path, buf.getvalue().encode())
        return
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=header, restval="").writerow(row)


def drop_rows_after(path: Path, step: int) -> None:
    """Resuming: forget logged rows past the checkpoint, so the rerun does not duplicate them."""
    if not path.is_file():
        return
    rows = list(csv.DictReader(path.open()))
    kept = [r for r in rows if int(r["step"]) <= step]
    if len(kept) < len(rows):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
        atomic_write(path, buf.getvalue().encode())


class RunLogs:
    """``metrics.csv`` (training rows), ``eval.csv`` (evaluation rows) and ``tb/`` (the same as
    TensorBoard scalars) in a run folder, opened at ``step``: rows past it — logged after the
    checkpoint a run resumes from — are dropped first, so a resumed run never duplicates one."""

    FILES = {"train": "metrics.csv", "eval": "eval.csv"}

    def __init__(self, out: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out = out
        for name in self.FILES.values():
            drop_rows_after(out / name, step)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=step or None)

    def log(self, kind: str, step: int, row: dict, **csv_only: float) -> None:
        """One row of ``kind`` ("train" or "eval") at ``step``: to the CSV and, as ``<kind>/<key>``
        scalars, to TensorBoard; ``csv_only`` columns (e.g. wall-clock seconds) skip TensorBoard."""
        append_csv(self.out / self.FILES[kind], {"step": step, **row, **csv_only})
        for k, v in row.items():
            self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.tb.close()


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically: a crash mid-write leaves the previous checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(_own_numbers(state), buf)
    atomic_write(path, buf.getvalue())


def _own_numbers(x):
    """``x`` with every tensor that views a larger storage (one seed's slice of stacked weights,
    :mod:`cdp.rl.stacked`) copied out, so a checkpoint holds its own numbers alone."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.clone() if x.untyped_storage().nbytes() > x.numel() * x.element_size() else x
    if isinstance(x, dict):
        return {k: _own_numbers(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_own_numbers(v) for v in x]
    return x


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, or holding more than tensors and plain values."""


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``: state
    dicts, tensors and plain values only, so a crafted file in a shared run folder cannot run
    code. One :class:`CheckpointError` naming the file for anything else."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:  # what weights_only refuses: objects beyond tensors and plain values
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds objects a safe load refuses (not a cdp checkpoint, or altered): "
                                  f"{first[:160]}; delete it to train the run again") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:160]}); delete it to train the run "
                              "again, or restore it from a copy") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated, empty, not a zip
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__}); "
                              "delete it to train the run again, or restore it from a copy") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a cdp checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


class RunClock:
    """Wall-clock time of a run over every process that trained it. Each checkpoint keeps the
    seconds spent up to it (and how many of them went to evaluations), so a resumed run's time
    per 1k steps covers all its steps. A checkpoint written before this existed has no clock:
    then the time before it is this leg's rate times its steps.

    It also keeps the run's legs — which steps each process trained, where (``where``, e.g.
    ``"cuda on host-a"``), in how many seconds — so a run resumed on another machine or device
    says so in its summary; steps a checkpoint from before the legs existed covers are one leg
    ``where="unknown"``. A leg also keeps how busy the machine was while it trained: ``load``,
    the mean of the 1-minute load averages read at each checkpoint and at the end (processes
    running or waiting for a core, this one included), on ``cores`` cores; a time per 1k steps
    taken beside other work is slower than one taken alone."""

    def __init__(self, checkpoint: dict | None, start_step: int, where: str = "") -> None:
        self.start_step, self.t0, self.eval, self.where = start_step, time.perf_counter(), 0.0, where
        self.loads: list[float] = []
        prior = (checkpoint or {}).get("clock")
        self.prior: dict | None = {"wall": 0.0, "eval": 0.0} if start_step == 0 else prior
        self.prior_legs: list[dict] = list((self.prior or {}).get("legs", []))
        if start_step > 0 and not self.prior_legs:
            self.prior_legs = [{"from": 0, "to": start_step, "where": "unknown", "seconds": None}]

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Time spent inside counts as evaluation."""
        te = time.perf_counter()
        try:
            yield
        finally:
            self.eval += time.perf_counter() - te

    def totals(self, step: int) -> tuple[float, float]:
        """``(wall, eval)`` seconds from step 0 to ``step``."""
        leg = time.perf_counter() - self.t0
        if self.prior is not None:
            return self.prior["wall"] + leg, self.prior["eval"] + self.eval
        scale = step / max(step - self.start_step, 1)  # no clock in the old checkpoint: extrapolate this leg
        return leg * scale, self.eval * scale

    def legs(self, step: int) -> list[dict]:
        """Every leg up to ``step``: ``{"from", "to", "where", "seconds"}`` (and ``"load"``,
        ``"cores"`` where the OS gives a load average), this process's last. Each call reads
        the load once more."""
        here = {"from": self.start_step, "to": step, "where": self.where, "seconds": time.perf_counter() - self.t0}
        load = load_average()
        if load is not None:
            self.loads.append(load)
        if self.loads:
            here |= {"load": round(sum(self.loads) / len(self.loads), 2), "cores": os.cpu_count()}
        return [*self.prior_legs, here] if step > self.start_step else list(self.prior_legs)

    def state(self, step: int) -> dict:
        """What a checkpoint at ``step`` keeps."""
        wall, ev = self.totals(step)
        return {"clock": {"wall": wall, "eval": ev, "legs": self.legs(step)}}

    def per_1k_steps(self, step: int) -> tuple[float, float]:
        """Seconds per 1k steps over the whole run: with evaluations, and without them."""
        wall, ev = self.totals(step)
        return 1000 * wall / max(step, 1), 1000 * (wall - ev) / max(step, 1)


def load_average() -> float | None:
    """The machine's 1-minute load average; None where the OS keeps none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    """The CPU's model (``/proc/cpuinfo`` on Linux, else ``platform.processor()``) and the vector
    instructions torch's kernels use, e.g. ``"AMD EPYC, AVX2"``: machines behind one host name can
    differ, and their speed with them."""
    import platform

    import torch

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return ", ".join(x for x in (model, torch.backends.cpu.get_cpu_capability()) if x)


def where_label(device) -> str:
    """``"<device> (<CPU or GPU model>) on <host>"``, for :class:`RunClock`'s legs."""
    import socket

    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name() if dev.type == "cpu" else ""
    return f"{dev}{f' ({name})' if name else ''} on {socket.gethostname()}"


def rng_states(device, host: "torch.Generator | None" = None, dev: "torch.Generator | None" = None) -> dict:
    """The random-number state a checkpoint keeps: the CPU generator (``torch_rng``) and, on a
    CUDA device, that device's generator (``cuda_rng``), where its noise is drawn. ``host`` /
    ``dev``: a run's own generators (an ensemble member's); None: torch's default ones."""
    import torch

    out = {"torch_rng": host.get_state() if host is not None else torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda_rng"] = dev.get_state() if dev is not None else torch.cuda.get_rng_state(device)
    return out


def restore_rng_states(state: dict, device, host: "torch.Generator | None" = None,
                       dev: "torch.Generator | None" = None) -> None:
    """Undo :func:`rng_states` (a CUDA state is skipped when the run resumes on another device)."""
    import torch

    if host is not None:
        host.set_state(state["torch_rng"])
    else:
        torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        if dev is not None:
            dev.set_state(state["cuda_rng"])
        else:
            torch.cuda.set_rng_state(state["cuda_rng"], device)


class RunInterrupted(RuntimeError):
    """A run stopped on SIGTERM / SIGINT after checkpointing the step it was on."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message, signum)  # both in args: it pickles across processes
        self.signum = signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopSignals:
    """While active, SIGTERM and SIGINT (a scheduler's or the session's stop, Ctrl-C) do not kill
    the run mid-step: they set :attr:`signal`, the training loop finishes its step and
    :meth:`step_done` writes a checkpoint there and raises :class:`RunInterrupted`, so a stop loses no steps (without this,
    up to ``checkpoint_every`` of them). A second SIGINT (Ctrl-C twice) stops at once; a repeated
    SIGTERM does not, since one stop often sends several (a session ending signals the sweep's
    workers directly and again through the sweep's death; a process pool whose first worker
    exits terminates the others) and whoever insists follows with SIGKILL. A signal outside the
    main thread's reach gets the previous behaviour."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        import signal

        if self.signal is not None and signum == signal.SIGINT:  # Ctrl-C twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def step_done(self, step: int, steps: int, every: int, checkpoint: Path, save: Callable[[], None]) -> None:
        """End of training step ``step`` of ``steps``: ``save`` the checkpoint every ``every``
        steps and at the last; before the last, on a stop request, save (once) and raise
        :class:`RunInterrupted`."""
        scheduled = step % every == 0 or step == steps
        if scheduled:
            save()
        if self.signal is None or step >= steps:
            return
        import signal

        if not scheduled:
            save()
        raise RunInterrupted(f"stopped by {signal.Signals(self.signal).name} at step {step}; checkpoint saved at "
                             f"{checkpoint}: the same command resumes from there", self.signal)


def check_finite(step: int, losses: dict[str, float], checkpoint: Path) -> None:
    """Stop a run whose loss went NaN or infinite, saying where the last good checkpoint is, or
    that there is none yet (the trainers raise before saving, so a checkpoint on disk predates
    the bad step)."""
    if not all(np.isfinite(v) for v in losses.values()):
        bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not np.isfinite(v))
        kept = (f"last good checkpoint kept at {checkpoint}" if checkpoint.is_file()
                else "no checkpoint was written yet: check the data and the settings")
        raise FloatingPointError(f"non-finite loss at step {step} ({bad}); {kept}")


def plot_eval_curve(out: Path, key: str, ylabel: str) -> None:
    """``out/curve.png``: ``key`` (mean, with ``key``'s ``_se`` twin as a band) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((out / "eval.csv").open()))
    se = key.replace("mean", "se")
    x = [int(r["step"]) for r in rows]
    y = np.array([float(r[key]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, y, marker="o")
    if se in rows[0]:
        e = np.array([float(r[se]) for r in rows])
        ax.fill_between(x, y - e, y + e, alpha=0.3)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(out.name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(out / "curve.png", buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    """A run log's rows (``[]`` when the file is not there yet)."""
    return list(csv.DictReader(path.open())) if path.is_file() else []


TERM_STATS = ("active", "rate")  # the contraction term's logged share of rows above the floor, mean rate
#: metrics.csv columns a record's ``losses`` leave out: the step, the clock, and the term's own
#: stats (its ``term``). The critic's mean Q at the actor's actions (``q_pi``) goes with the losses.
NOT_LOSSES = ("step", "seconds", "contraction_rows", *(f"contraction_{k}" for k in TERM_STATS))


def stretch_means(rows: list[dict], columns: dict[str, str], eval_steps: list[int]) -> list[dict]:
    """Logged ``rows`` averaged over each stretch between evaluations, ``(previous eval, eval]``:
    ``[{"step": eval step, name: mean of column}]`` for ``columns`` = ``{name: column}``, each
    column over the rows that hold a value for it (a column added when a run resumed under a
    newer version is empty before); a stretch where no column has a value is left out."""
    out, prev = [], 0
    for step in eval_steps:
        part = [r for r in rows if prev < int(r["step"]) <= step]
        means = {}
        for name, col in columns.items():
            vals = [float(r[col]) for r in part if r.get(col) not in (None, "")]
            if vals:
                means[name] = sum(vals) / len(vals)
        if means:
            out.append({"step": step, **means})
        prev = step
    return out


def term_trace(run_dir: Path, eval_steps: list[int], rows: list[dict] | None = None) -> list[dict]:
    """The contraction term's logged stats (``contraction_active``, ``contraction_rate`` in
    ``metrics.csv``) averaged over each stretch between evaluations: ``[{"step", "active",
    "rate"}]`` at the evaluation steps; empty for a run that does not log them. ``rows``: the
    run's ``metrics.csv`` rows where the caller has read them already."""
    rows = read_rows(run_dir / "metrics.csv") if rows is None else rows
    cols = {k: f"contraction_{k}" for k in TERM_STATS if rows and f"contraction_{k}" in rows[0]}
    return stretch_means(rows, cols, eval_steps)


def loss_trace(run_dir: Path, eval_steps: list[int], rows: list[dict] | None = None) -> list[dict]:
    """Every logged loss in ``metrics.csv`` (``critic_loss``, ``denoise_loss``, ..., and the
    critic's ``q_pi``: all columns but :data:`NOT_LOSSES`) averaged over each stretch between
    evaluations, so a committed record shows how training went where its scores alone cannot say
    why (a critic that diverged). ``rows`` as :func:`term_trace`."""
    rows = read_rows(run_dir / "metrics.csv") if rows is None else rows
    cols = {k: k for k in (rows[0] if rows else {}) if k not in NOT_LOSSES}
    return stretch_means(rows, cols, eval_steps)


def write_record(run_dir: Path, path: Path) -> Path:
    """A small per-run record (config, summary, evaluation curve, the logged losses averaged
    between evaluations and, for a run that logs the contraction term's stats, theirs) at ``path``, to commit under
    ``results/``; checkpoints stay in the run folder."""
    evals = read_rows(run_dir / "eval.csv")
    rec = {"config": json.loads((run_dir / "config.json").read_text()),
           "summary": json.loads((run_dir / "summary.json").read_text()), "eval": evals}
    steps, rows = [int(r["step"]) for r in evals], read_rows(run_dir / "metrics.csv")  # read once for both traces
    for key, trace in (("term", term_trace(run_dir, steps, rows)), ("losses", loss_trace(run_dir, steps, rows))):
        if trace:
            rec[key] = trace
    atomic_write(path, json.dumps(rec, indent=1).encode())
    return path
