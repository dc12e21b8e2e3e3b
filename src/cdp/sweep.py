"""Grids of training runs, one process per run, resumable: ``cdp sweep CONFIG``.

A sweep config (TOML, or JSON with the same keys)::

    kind = "rl"                      # what each job trains: "rl" (cdp.rl.trainer) or "il" (cdp.il.trainer)
    out = "runs/sweeps/offline_rl"   # run folders: <out>/<dataset>/<run name> (il: <out>/<task>/<file>/<run name>)
    results = "results/rl"           # optional: a small per-run record for each finished run
    workers = 2                      # optional: parallel jobs (default: CPU count)
    threads = 1                      # optional: torch threads per job (default 1)
    gpus = 0                         # optional, Ray: GPUs each job reserves (with device = "cuda" in [fixed])

    [fixed]                          # TrainConfig fields shared by every job
    steps = 50000

    [grid]                           # TrainConfig fields to cross; the first key varies slowest ("none" = None)
    seed = [0, 1, 2]
    dataset = ["cdp/hopper/medium-replay-v0"]
    fraction = [1.0, 0.1]

    [[arms]]                         # optional: each grid point runs every arm, in order (fastest);
    algo = "edp"                     # an arm's keys (a value or a list to cross) are its own, so a
    [[arms]]                         # setting one method does not use is not crossed with it
    algo = "cdp"
    gamma = [0.1, 1.0]

Every job's config is validated before any job starts. A job whose run folder already holds a
finished summary, or whose committed record does (a fresh clone), is skipped; an interrupted one
resumes from its checkpoint (the trainer's own resume), so re-running a killed sweep neither
repeats nor loses work. A job whose folder another
live process is training (the same sweep started twice, or on two machines sharing the runs) is
skipped with a message, never trained twice at once (``cdp.runlog.claim_run``). Jobs run in a local process
pool or, with ``backend="ray"`` (``cdp sweep CONFIG --backend ray --address auto``), as Ray tasks.
Several configs given together (``cdp sweep A B``) share one queue, in order, so no worker idles
while another study still has runs to do. A dataset the unfinished jobs read that is missing, and
that ``cdp rl make-data`` / ``cdp il make-data`` make (the ids and paths they give), is made first
(:func:`make_missing_data`), so a bundled study runs on a fresh clone.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from .io import check_types, read_json, required_fields
from .runlog import RunBusy, RunInterrupted, StopSignals, finished_in_folder, run_holder
from .runtime import check_device_name, tune_allocator, usable_cores

KINDS = ("rl", "il")
_TOP_KEYS = {"kind", "out", "results", "workers", "threads", "gpus", "fixed", "grid", "arms", "name"}


@dataclass
class Job:
    """One run: a trainer config (as a dict) and its folder."""

    kind: str
    config: dict
    out: str
    results: str | None = None
    threads: int = 1
    gpus: float = 0.0  # Ray backend: GPUs this job reserves

    def record_path(self) -> Path | None:
        """Where the finished run's record goes (None when the sweep keeps no records)."""
        return None if self.results is None else _config_class(self.kind)(**self.config).record_path(self.results)


@dataclass
class SeedGroup:
    """Offline-RL jobs of one config that differ only in their seed, trained together in one
    worker process (:func:`cdp.rl.ensemble.train_ensemble`): what ``--ensemble-seeds`` queues."""

    members: list[Job]
    stacked: bool | None = None  # cdp.rl.ensemble.train_ensemble's: None lets the device decide

    @property
    def threads(self) -> int:
        return self.members[0].threads

    @property
    def gpus(self) -> float:
        return self.members[0].gpus


def group_seeds(jobs: list[Job]) -> list[Job | SeedGroup]:
    """``jobs`` with the offline-RL ones that differ only in their seed (and share a results folder)
    gathered into :class:`SeedGroup` s, in the order of each group's first job; imitation jobs and
    lone seeds stay as they are."""
    groups: dict[str, list[Job]] = {}
    order: list[Job | str] = []
    for j in jobs:
        if j.kind != "rl":
            order.append(j)
            continue
        key = json.dumps([{k: v for k, v in j.config.items() if k != "seed"}, j.results, j.threads, j.gpus],
                         sort_keys=True)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(j)
    out: list[Job | SeedGroup] = []
    for item in order:
        if isinstance(item, Job):
            out.append(item)
        else:
            out.extend(deal(groups[item], 1))
    return out


def deal(members: list[Job], parts: int, stacked: bool | None = None) -> list[Job | SeedGroup]:
    """``members`` (seeds of one config) dealt in turn into at most ``parts`` units: a lone job
    stays a :class:`Job`, two or more make a :class:`SeedGroup`."""
    if not members:
        return []
    k = max(1, min(parts, len(members)))
    shares = [members[i::k] for i in range(k)]
    return [s[0] if len(s) == 1 else SeedGroup(s, stacked) for s in shares]


def seed_units(jobs: list[Job], workers: int) -> list[Job | SeedGroup]:
    """What ``--ensemble-seeds`` queues: the seeds of each config (:func:`group_seeds`) on a CPU
    dealt out over the ``workers`` (processes use the cores better than one process's threads do
    for these small networks: benchmarks/ensemble.py); on a GPU stacked into one model, or, where
    the config does not stack (:func:`cdp.rl.stacked.stack_supported`), each seed a
    job of its own (seeds taking turns on a GPU are refused: :mod:`cdp.rl.ensemble`)."""
    out: list[Job | SeedGroup] = []
    for unit in group_seeds(jobs):
        if not isinstance(unit, SeedGroup):
            out.append(unit)
        elif _on_cpu(unit.members[0]):
            out.extend(deal(unit.members, workers))
        else:
            out.extend([unit] if _stacks(unit) else unit.members)
    return out


def _stacks(group: SeedGroup) -> bool:
    """The group's runs can be stacked (probe agents on the CPU)."""
    from .rl.ensemble import refuse_unstackable
    from .rl.trainer import TrainConfig

    try:
        refuse_unstackable([TrainConfig(**j.config) for j in group.members])
    except ValueError:
        return False
    return True


def _on_cpu(job: Job) -> bool:
    """The job trains on the CPU (a device this machine lacks is the job's own error, later)."""
    import torch

    name = job.config.get("device", "auto")
    return name == "cpu" or (name == "auto" and not torch.cuda.is_available())


@dataclass
class SweepConfig:
    kind: str
    out: str
    grid: dict[str, list]
    fixed: dict = field(default_factory=dict)
    results: str | None = None
    workers: int | None = None
    threads: int = 1
    gpus: float = 0.0  # Ray backend: GPUs each job reserves (fractions share one)
    name: str | None = None
    # each grid point runs every arm (its keys crossed among themselves), in order; one empty
    # arm = the grid alone
    arms: list[dict[str, list]] = field(default_factory=lambda: [{}])

    def on_device(self, device: str) -> None:
        """Train every job on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``) whatever
        ``fixed`` or the grid say. Where a run trains is not part of what it computes: its folder,
        name and record stay the same, and it resumes on another device."""
        check_device_name(device)
        self.grid = {k: v for k, v in self.grid.items() if k != "device"}
        self.arms = [{k: v for k, v in arm.items() if k != "device"} for arm in self.arms]
        self.fixed = {**self.fixed, "device": device}

    def points(self) -> list[dict]:
        """Each job's keys beyond ``fixed``, in order: the grid's points (first key slowest), each
        followed by every arm's points (an arm's first key slowest)."""
        return [{**dict(zip(self.grid, values)), **dict(zip(arm, arm_values))}
                for values in itertools.product(*self.grid.values())
                for arm in self.arms for arm_values in itertools.product(*arm.values())]

    def jobs(self) -> list[Job]:
        """The grid's jobs in order (:meth:`points`), each config checked."""
        jobs = []
        for point in self.points():
            cfg = _config_class(self.kind)(**{**self.fixed, **point})
            jobs.append(Job(self.kind, _asdict(cfg), str(Path(self.out) / _run_path(self.kind, cfg)),
                            self.results, self.threads, self.gpus))
        seen: dict[str, dict] = {}
        for j in jobs:
            if j.out in seen:
                diff = sorted(k for k in j.config if j.config[k] != seen[j.out][k])
                raise ValueError(f"two jobs share the run folder {j.out} (they differ only in {diff}, which this "
                                 f"run name does not show): drop that key from the grid for these jobs")
            seen[j.out] = j.config
        return jobs


def _config_class(kind: str) -> type:
    if kind == "rl":
        from .rl.trainer import TrainConfig

        return TrainConfig
    if kind == "il":
        from .il.trainer import ILTrainConfig

        return ILTrainConfig
    raise ValueError(f"unknown sweep kind {kind!r}; choose from {KINDS}")


def _asdict(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def _run_path(kind: str, cfg) -> str:
    if kind == "rl":
        return f"{cfg.dataset_slug()}/{cfg.run_name()}"
    if kind == "il":
        return f"{cfg.task}/{Path(cfg.dataset).stem}/{cfg.run_name()}"
    raise ValueError(f"unknown sweep kind {kind!r}")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config; every problem is a ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep config at {path}")
    text = path.read_text()
    if path.suffix == ".json":
        raw = read_json(path, "sweep config")
    else:
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for k in ("kind", "out"):
        if k not in raw:
            raise ValueError(f"{path}: missing {k!r}")
    if "grid" not in raw and "arms" not in raw:
        raise ValueError(f"{path}: missing 'grid' (or 'arms')")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown kind {kind!r}; choose from {KINDS}")
    grid, fixed, arms = raw.get("grid", {}), raw.get("fixed", {}), raw.get("arms", [{}])
    if not isinstance(grid, dict) or (not grid and "arms" not in raw):
        raise ValueError(f"{path}: the grid is empty")
    if "arms" in raw and (not isinstance(arms, list) or not arms or not all(isinstance(a, dict) and a for a in arms)):
        raise ValueError(f"{path}: arms must be a non-empty list of non-empty tables ([[arms]]), got {arms!r}")
    names = {f.name for f in fields(_config_class(kind))}
    for where, table in (("grid", grid), ("fixed", fixed), *((f"arms[{i}]", a) for i, a in enumerate(arms))):
        bad = sorted(set(table) - names)
        if bad:
            raise ValueError(f"{path}: unknown {where} key(s) {bad}; {kind} runs take {sorted(names)}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{path}: grid key {k!r} needs a non-empty list of values, got {v!r}")
    for i, arm in enumerate(arms):
        empty = sorted(k for k, v in arm.items() if v == [])
        if empty:
            raise ValueError(f"{path}: arms[{i}] key(s) {empty} need a value or a non-empty list")
    arms = [{k: v if isinstance(v, list) else [v] for k, v in arm.items()} for arm in arms]
    for i, arm in enumerate(arms):
        missing = sorted(set(required_fields(_config_class(kind))) - {*grid, *fixed, *arm})
        if missing:
            raise ValueError(f"{path}: {kind} runs need {missing}, in [fixed] or [grid]"
                             + (f" or every arm (arms[{i}] lacks them)" if "arms" in raw else ""))
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"{path}: {both} both fixed and in the grid")
    for i, arm in enumerate(arms):
        both = sorted(set(arm) & {*grid, *fixed})
        if both:
            raise ValueError(f"{path}: {both} in arms[{i}] and also in [fixed] or [grid]; give each key one place")
    workers, threads = raw.get("workers"), raw.get("threads", 1)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"{path}: workers must be a positive integer, got {workers!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{path}: threads must be a positive integer, got {threads!r}")
    gpus = raw.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
        raise ValueError(f"{path}: gpus must be a number >= 0, got {gpus!r}")
    none = lambda v: None if isinstance(v, str) and v.lower() == "none" else v  # noqa: E731 - TOML has no null
    grid = {k: [none(x) for x in v] for k, v in grid.items()}
    arms = [{k: [none(x) for x in v] for k, v in arm.items()} for arm in arms]
    fixed = {k: none(v) for k, v in fixed.items()}
    for k, vs in [*grid.items(), *(kv for arm in arms for kv in arm.items()), *((k, [v]) for k, v in fixed.items())]:
        for v in vs:  # "200" for steps, 0.5 for a seed: refused here, before any run starts
            check_types(_config_class(kind), {k: v}, str(path))
    sweep = SweepConfig(kind=kind, out=raw["out"], grid=grid, fixed=fixed, results=raw.get("results"),
                        workers=workers, threads=threads, gpus=float(gpus), name=raw.get("name"), arms=arms)
    sweep.jobs()  # every job's config is checked before any starts
    return sweep


def finished_summary(job: Job) -> dict | None:
    """The summary of the job's finished run, or None: the run folder's ``summary.json`` at the
    job's full budget, or else the job's committed record (``results``) at that budget for the same
    config, so a fresh clone, or another machine, does not train a recorded run again. The device
    a run trained on is not part of the comparison."""
    summary = finished_in_folder(Path(job.out), job.config["steps"])
    if summary is not None:
        return summary
    rec = job.record_path()
    if rec is None or not rec.is_file():
        return None
    saved = read_json(rec, "run record")
    if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
        raise ValueError(f"{rec}: not a run record; restore it from version control, or delete it to train the run again")
    cfg, summary = saved.get("config", {}), saved.get("summary", {})
    same = all(cfg.get(k, v) == v for k, v in job.config.items() if k != "device")
    return summary if same and summary.get("step", -1) >= job.config["steps"] else None


def is_finished(job: Job) -> bool:
    """The job's run is finished at its full budget, in its folder or in its record
    (:func:`finished_summary`)."""
    return finished_summary(job) is not None


def _logged_step(job: Job) -> int | None:
    """The last step in the run's ``metrics.csv`` (None before the first row)."""
    try:
        last = (Path(job.out) / "metrics.csv").read_bytes().rstrip().rsplit(b"\n", 1)[-1].split(b",", 1)[0]
        return int(last)
    except (OSError, ValueError):
        return None


def _logged_lately(job: Job, recent_s: float) -> bool:
    """The job's ``metrics.csv`` was written in the last ``recent_s`` seconds (False before it
    exists): a running job, not a queued one whose old log waits to resume."""
    try:
        return time.time() - (Path(job.out) / "metrics.csv").stat().st_mtime <= recent_s
    except OSError:
        return False


def job_state(job: Job) -> tuple[str, str]:
    """``(state, detail)``: ``done``; ``running`` (another live process holds the run's claim:
    its step and who); ``stopped`` (begun, not finished, nobody on it: it resumes from its last
    checkpoint); ``todo``."""
    if is_finished(job):
        return "done", "" if (Path(job.out) / "summary.json").is_file() else f"recorded in {job.record_path()}"
    step, steps = _logged_step(job), job.config["steps"]
    at = f"{step}/{steps}" if step is not None else f"0/{steps}"
    holder = run_holder(Path(job.out))
    if holder is not None:
        return "running", f"{at}, {holder}"
    if (Path(job.out) / "checkpoint.pt").is_file():
        return "stopped", f"logged to {at}; resumes from its last checkpoint"
    return "todo", ""


def _kind(job: Job) -> str:
    """What a job's pace is shared with: its algorithm (offline RL); its task and policy, with the
    term's estimator for a CDP policy (imitation: a step of the exact eigenvalue on a 16 x 7 chunk
    costs ~5x Lanczos 4's, and a Transport step and rollout many times a Lift one)."""
    c = job.config
    if job.kind != "il":
        return c.get("algo") or c.get("policy")
    from .il.trainer import ILTrainConfig, estimator_suffix

    # the estimator as the run name spells it, with the defaults of configs saved before it existed
    est = {**ILTrainConfig.SAVED_BEFORE, **{k: c[k] for k in ILTrainConfig.SAVED_BEFORE if k in c}}
    name = c["policy"] + estimator_suffix(c["policy"], est["products"], est["exact_max_dim"])
    if name.startswith("cdp") and c.get("contraction_subbatch") is not None:
        name += f"-sub{c['contraction_subbatch']}"
    return f"{c['task']}/{name}" if c.get("task") else name


def _median_per_kind(rates: dict[str, list[float]]) -> dict[str, float]:
    return {k: sorted(v)[len(v) // 2] for k, v in rates.items() if v}


def finished_pace(jobs: list[Job], where: Callable[[Job], str | None] | None = None,
                  summaries: dict[str, dict | None] | None = None) -> dict[str, float]:
    """The finished jobs' own pace: median seconds per 1k steps (evaluations included) per
    kind (:func:`_kind`), from their summaries or records (``summaries``: each job's
    :func:`finished_summary` by its folder, read here where not given). With ``where`` (a job ->
    its :func:`~cdp.runlog.where_label` on this machine, None where unknown), only the legs a run
    trained at that label count (a run's pace from them), so the pace is this machine's own; runs
    with no such leg are left out."""
    rates: dict[str, list[float]] = {}
    for j in jobs:
        summary = summaries[j.out] if summaries is not None and j.out in summaries else finished_summary(j)
        if summary is None or "seconds_per_1k_steps" not in summary:
            continue
        if where is None:
            rates.setdefault(_kind(j), []).append(summary["seconds_per_1k_steps"])
            continue
        label = where(j)
        legs = [leg for leg in summary.get("legs") or [] if label is not None and leg.get("where") == label
                and leg.get("seconds") is not None and leg["to"] > leg["from"]]
        if legs:
            rates.setdefault(_kind(j), []).append(
                1000 * sum(leg["seconds"] for leg in legs) / sum(leg["to"] - leg["from"] for leg in legs))
    return _median_per_kind(rates)


def this_machine(job: Job) -> str | None:
    """The :func:`~cdp.runlog.where_label` the job would train under here (its device and this
    machine's CPU or GPU model), or None where the device is not here."""
    from .runtime import resolve_device

    try:
        return _where_label(str(resolve_device(job.config.get("device", "auto"))))
    except ValueError:
        return None


@functools.lru_cache(maxsize=None)
def _where_label(device: str) -> str:
    """:func:`~cdp.runlog.where_label`, once per device and process (it reads /proc/cpuinfo)."""
    from .runlog import where_label

    return where_label(device)


def hours_left(jobs: list[Job], pace: dict[str, float] | None = None) -> float | None:
    """Single-process hours the unfinished ``jobs`` still need at ``pace`` (seconds per 1k steps
    per kind, :func:`_kind`; by default :func:`finished_pace`). None if some unfinished job's kind
    has no pace to go by."""
    pace = finished_pace(jobs) if pace is None else pace
    needs = [seconds_needed(j, pace) for j in jobs if not is_finished(j)]
    return None if None in needs else sum(needs) / 3600  # type: ignore[arg-type]


def recent_pace(job: Job, rows: int = 20) -> float | None:
    """Seconds per 1k steps over the job's last ``rows`` logged training rows (wall time,
    evaluations included), within the process that trains it now; None with fewer than two rows.
    The ``seconds`` column restarts with every process, so only the latest leg counts."""
    try:
        lines = (Path(job.out) / "metrics.csv").read_text().strip().splitlines()
    except OSError:
        return None
    if len(lines) < 3 or not lines[0].endswith(",seconds"):
        return None
    points = []
    for line in lines[1:]:
        try:
            step, sec = line.split(",", 1)[0], line.rsplit(",", 1)[1]
            points.append((int(step), float(sec)))
        except ValueError:  # a row being written
            continue
    leg = points[-1:]
    for p in reversed(points[:-1]):  # back to where the clock restarted
        if p[1] >= leg[0][1] or len(leg) > rows:
            break
        leg.insert(0, p)
    (s0, t0), (s1, t1) = leg[0], leg[-1]
    return 1000 * (t1 - t0) / (s1 - s0) if s1 > s0 else None


def current_pace(jobs: list[Job], recent_s: float = 600.0) -> dict[str, float]:
    """The pace the jobs training now go at (a live process holds the run's claim and logged in
    the last ``recent_s`` seconds): median seconds per 1k steps per kind (:func:`_kind`), from
    :func:`recent_pace`. A machine's speed can change from one day to the next (a shared host), so this
    can differ from the finished runs' pace. A run stopped a minute ago does not count."""
    rates: dict[str, list[float]] = {}
    for j in jobs:
        if not _logged_lately(j, recent_s) or run_holder(Path(j.out)) is None:
            continue
        pace = None if is_finished(j) else recent_pace(j)
        if pace is not None:
            rates.setdefault(_kind(j), []).append(pace)
    return _median_per_kind(rates)


def pace_of_the_day(jobs: list[Job], finished: dict[str, float] | None = None,
                    now: dict[str, float] | None = None,
                    here: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds per 1k steps per kind (:func:`_kind`) to plan by. Where a kind trains now, the running
    jobs' pace (``now``, by default :func:`current_pace`). For the other kinds, the finished runs'
    pace on this machine (``here``, by default :func:`finished_pace` with :func:`this_machine`)
    where the kind has one, else the finished runs' pace on any machine (``finished``, by default
    :func:`finished_pace`); each scaled by how much faster or slower than that same measure the
    running kinds go today (the median ratio; 1 where nothing runs or no running kind has a
    finished pace). Hosts differ several times in speed, and a shared one from day to day: a plan
    by another host's records turns away runs that fit."""
    if finished is None or here is None:  # one read of the records for both
        summaries = {j.out: finished_summary(j) for j in jobs}
        finished = finished_pace(jobs, summaries=summaries) if finished is None else finished
        here = finished_pace(jobs, where=this_machine, summaries=summaries) if here is None else here
    now = current_pace(jobs) if now is None else now

    def speed(base: dict[str, float]) -> float:
        ratios = sorted(now[k] / base[k] for k in now if base.get(k))
        return ratios[len(ratios) // 2] if ratios else 1.0

    anywhere, on_this = speed(finished), speed(here)
    return ({k: v * anywhere for k, v in finished.items()} | {k: v * on_this for k, v in here.items()} | now)


def seconds_needed(unit: Job | SeedGroup, pace: dict[str, float]) -> float | None:
    """Seconds a job (or a group of seeds, trained in turn) still needs at ``pace`` (seconds per
    1k steps per kind, :func:`_kind`), from its last logged step; None where its kind has no pace."""
    jobs = _members(unit)
    if any(_kind(j) not in pace for j in jobs):
        return None
    return sum(max(0, j.config["steps"] - (_logged_step(j) or 0)) / 1000 * pace[_kind(j)] for j in jobs)


def first_that_fits(units: Sequence[Job | SeedGroup], pace: dict[str, float],
                    seconds_left: float, fill: bool = False) -> Job | SeedGroup | None:
    """The first of ``units`` (queue order) that should finish in ``seconds_left`` at ``pace``
    (:func:`seconds_needed`); a unit whose pace is unknown counts as fitting (nothing says it does
    not). None where none fits, or with ``fill`` the first of them all: a worker that would
    otherwise sit idle trains a run part-way, to its checkpoint at the limit, where the run
    folders outlast the slot and the next one resumes it."""
    for u in units:
        need = seconds_needed(u, pace)
        if need is None or need <= seconds_left:
            return u
    return units[0] if fill and units else None


def plan_within(units: Sequence[Job | SeedGroup], pace: dict[str, float], workers: int,
                seconds: float, fill: bool = False) -> list[tuple[Job | SeedGroup, float, float | None]]:
    """What a sweep with ``workers`` and ``seconds`` to go would start, at ``pace``: ``(unit,
    start, end)`` in seconds from now, as :func:`run_sweep` picks (each free worker takes
    :func:`first_that_fits`, with ``fill`` as there); ``end`` None for a unit that will not finish
    (unknown pace, or started by ``fill`` past what fits), which then holds its worker to the
    limit. An estimate: the real runs go at the machine's pace of the day."""
    queued, free_at, out = list(units), [0.0] * workers, []
    while queued:
        w = min(range(workers), key=free_at.__getitem__)
        now = free_at[w]
        unit = first_that_fits(queued, pace, seconds - now, fill)
        if unit is None or now >= seconds:
            break
        queued.remove(unit)
        need = seconds_needed(unit, pace)
        end = None if need is None or now + need > seconds else now + need
        out.append((unit, now, end))
        free_at[w] = seconds if end is None else end
    return out


def run_job(job: Job | SeedGroup) -> str:
    """Train one job, or a group of seeds together (resuming where a folder holds a checkpoint);
    returns the (first) run folder. A stop signal (the sweep or its session ending) checkpoints
    the current step, then ends this worker as the signal would have."""
    try:
        return _train_group(job) if isinstance(job, SeedGroup) else _train_job(job)
    except RunInterrupted as e:
        signal.signal(e.signum, signal.SIG_DFL)
        os.kill(os.getpid(), e.signum)
        raise


def prepare_training_process(threads: int) -> None:
    """What a process (a local pool's worker or a Ray worker) sets before it trains a job:
    ``threads`` torch threads, the allocator tuned (:mod:`cdp.runtime`), and a thread lock for
    tqdm. tqdm's default lock is a multiprocessing one, a named semaphore made with the first bar;
    a stopped run ends its process by the signal (:func:`run_job`), with no exit handlers, so the
    semaphore would outlive it and the resource tracker warn of a leak at the sweep's end. The
    bars of one process share no lock with another anyway."""
    import torch

    torch.set_num_threads(threads)
    tune_allocator()
    tqdm.set_lock(threading.RLock())


def _train_job(job: Job) -> str:
    prepare_training_process(job.threads)
    if job.kind == "rl":
        from .rl.trainer import TrainConfig, record, train

        train(TrainConfig(**job.config), job.out, progress=False, reenter=False)
        if job.results:
            record(job.out, job.results)
    elif job.kind == "il":
        from .il.trainer import ILTrainConfig
        from .il.trainer import record as il_record
        from .il.trainer import train as il_train

        il_train(ILTrainConfig(**job.config), job.out, progress=False, reenter=False)
        if job.results:
            il_record(job.out, job.results)
    else:
        raise ValueError(f"unknown sweep kind {job.kind!r}")
    return job.out


def _train_group(group: SeedGroup) -> str:
    from .rl.ensemble import train_ensemble
    from .rl.trainer import TrainConfig, record

    prepare_training_process(group.threads)
    jobs = group.members
    train_ensemble([TrainConfig(**j.config) for j in jobs], [j.out for j in jobs], progress=False, reenter=False,
                   stacked=group.stacked)
    for j in jobs:
        if j.results:
            record(j.out, j.results)
    return jobs[0].out


def init_worker(threads: int) -> None:
    """Initializer of a local pool's worker process: ``threads`` threads for torch and for BLAS
    libraries loaded later, and (Linux) the worker ends with the process that started it."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # torch sizes its pool from the core count as much as from the variables: size it directly
    import torch

    torch.set_num_threads(threads)
    try:  # Linux: a worker dies with the sweep that started it (no orphan keeps training)
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


BACKENDS = ("local", "ray")


def queue(sweeps: Sequence[SweepConfig]) -> list[Job]:
    """The jobs of ``sweeps`` in order, as one queue; a run folder named by two studies (studies that
    share runs, like ``imitation_gamma`` and ``imitation_margin``) is queued once. Two studies that
    ask one folder for different configs are a ``ValueError``."""
    jobs: dict[str, Job] = {}
    for sweep in sweeps:
        for j in sweep.jobs():
            first = jobs.setdefault(j.out, j)
            if first.config != j.config:
                diff = sorted(k for k in j.config if j.config[k] != first.config.get(k))
                raise ValueError(f"two sweeps name the run folder {j.out} with different configs (they differ in "
                                 f"{diff})")
    return list(jobs.values())


def make_missing_data(jobs: Sequence[Job]) -> list[str]:
    """Make the datasets ``jobs`` read that are missing and that ``cdp rl make-data`` / ``cdp il
    make-data`` make with their defaults (the generated Minari ids, ``data/il/<task>_<quality>.hdf5``),
    each once, before any job starts; returns what was made. Any other missing dataset is left to
    the job, whose error names it."""
    made: list[str] = []
    rl = dict.fromkeys(str(j.config["dataset"]) for j in jobs if j.kind == "rl")
    if any(d.startswith("cdp/") for d in rl):
        import minari

        from .data.generate import recipe

        local = set(minari.list_local_datasets())
        for did in (d for d in rl if d not in local):
            if (how := recipe(did)) is not None:  # (another process making it: make() waits, then keeps it)
                print(f"making Minari dataset {did} (`{how.command}`) ...", flush=True)
                made.append(how.make())
    il = dict.fromkeys((str(j.config["task"]), str(j.config["dataset"])) for j in jobs if j.kind == "il")
    for task, path in il:
        from .il.tasks import default_quality, write_demos

        if not Path(path).is_file() and (quality := default_quality(task, path)) is not None:
            print(f"making {path} (`cdp il make-data {task} {quality}`) ...", flush=True)
            made.append(str(write_demos(task, quality, path, progress=True, if_missing=True)))
    return made


class SweepFailed(RuntimeError):
    """Some of a sweep's jobs failed (the others ran to the end)."""


def run_sweep(sweep: SweepConfig | Sequence[SweepConfig], progress: bool = True,
              on_done: Callable[[Job], None] | None = None, backend: str = "local",
              address: str | None = None, ensemble_seeds: bool = False,
              time_limit_s: float | None = None, fill: bool = False) -> list[Job]:
    """Run every unfinished job and return the jobs that ran. A failing job does not stop the
    others; the first error is raised at the end. A job another process is training (``RunBusy``)
    is skipped with a message and is not among those returned. Several sweeps run as one queue
    (``queue``), with the most workers any of them asks for.

    ``local``: a process pool of ``sweep.workers`` fresh interpreters. ``ray``: one Ray task per
    job (``num_cpus = sweep.threads``) on the cluster at ``address`` (``"auto"``, ``"ray://..."``),
    on the Ray instance this process already joined, or on a local one sized to ``sweep.workers``;
    a task whose worker dies is retried and resumes from its run's checkpoint. The run folders must
    be on storage every node sees. ``ensemble_seeds``: the unfinished offline-RL runs of one config
    that differ only in their seed train together, dealt over the workers on a CPU, stacked on a
    GPU (:func:`seed_units`).

    ``time_limit_s`` (local backend): a run starts only if it should finish before the limit at the
    pace of the queue's finished runs, scaled to the running runs' pace of the day
    (:func:`pace_of_the_day`, :func:`first_that_fits`; a later, shorter run may go first),
    and at the limit every running run checkpoints its step and stops (it resumes next time); what
    was left is printed. For a machine or a scheduler slot that ends at a known time. ``fill``: a
    worker with no run that fits left starts the first queued one anyway, to be stopped at its
    checkpoint at the limit (for slots whose run folders outlast them)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if time_limit_s is not None and (backend != "local" or not time_limit_s > 0):
        raise ValueError("a time limit needs the local backend and a positive number of seconds")
    if fill and time_limit_s is None:
        raise ValueError("fill (--fill) needs a time limit (--time-limit) to stop the runs it starts at")
    deadline = None if time_limit_s is None else time.time() + time_limit_s
    sweeps = [sweep] if isinstance(sweep, SweepConfig) else list(sweep)
    jobs = queue(sweeps)
    workers = max(s.workers or usable_cores() for s in sweeps)
    todo = [j for j in jobs if not is_finished(j)]
    make_missing_data(todo)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), disable=not progress, desc="sweep", unit="run")
    errors: list[tuple[Job, BaseException]] = []
    busy: list[Job] = []

    def finished(job: Job, error: BaseException | None) -> None:
        if isinstance(error, RunBusy):
            busy.append(job)
            bar.write(f"skipped: {error}")
        elif error is not None:
            errors.append((job, error))
            bar.write(f"failed: {job.out}: {error}")
        elif on_done is not None:
            on_done(job)
        bar.update(1)

    line = LiveLine(bar)

    def live(running: list[Job]) -> None:
        line.show(postfix=live_progress(running))

    units: list[Job | SeedGroup] = seed_units(todo, workers) if ensemble_seeds else list(todo)

    def unit_done(unit: Job | SeedGroup, error: BaseException | None) -> None:
        for job in _members(unit):
            finished(job, error)

    def unit_live(running: list[Job | SeedGroup]) -> None:
        live([j for u in running for j in _members(u)])

    pick, stopped = None, []
    if deadline is not None:
        def pick(queued: list[Job | SeedGroup]) -> Job | SeedGroup | None:
            return first_that_fits(queued, pace_of_the_day(jobs), deadline - time.time(), fill)

    try:
        if units and backend == "ray":
            _run_ray(units, workers, address, unit_done, unit_live)
        elif units:
            stopped = _run_local(units, workers, unit_done, unit_live, pick, deadline)
    finally:
        bar.close()
    if deadline is not None:
        left = [j for j in todo if not is_finished(j) and j not in busy and all(j is not e for e, _ in errors)]
        cut = [j for u in stopped for j in _members(u)]
        if left:
            print(f"time limit: {len(cut)} run(s) stopped at the limit, checkpointed (they resume); "
                  f"{len(left) - len(cut)} not started"
                  + ("" if fill else " (none would have finished in the time left)"), flush=True)
        todo = [j for j in todo if j not in left]
    if errors:
        job, e = errors[0]
        raise SweepFailed(f"{len(errors)} of {len(todo)} jobs failed (each named above); first: {job.out}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    return [j for j in todo if j not in busy]


def train_seeds(cfgs: list, outs: list[str | Path], processes: int, results: str | None = None,
                stacked: bool | None = None, progress: bool = True) -> list[dict]:
    """Seeds of one offline-RL config (``cdp rl train --seeds``) on ``processes`` worker processes,
    the seeds dealt out in turn, each process training its share together
    (:func:`cdp.rl.ensemble.train_ensemble`, one lone seed as :func:`cdp.rl.trainer.train`) on
    ``cores // processes`` threads; with ``results``, each run's record. Runs finished at their
    budget are not trained again. Returns the runs' summaries, in order. A failing share does not
    stop the others; its error is raised at the end."""
    from .rl.ensemble import check_seeds_only, refuse_unstackable
    from .rl.trainer import record

    check_seeds_only(cfgs)
    if len(outs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} runs need {len(cfgs)} folders, got {len(outs)}")
    if stacked:  # refused before any run folder is made, as one process refuses
        refuse_unstackable(cfgs)
    threads = max(1, usable_cores() // processes)
    jobs = [Job("rl", _asdict(c), str(o), results, threads) for c, o in zip(cfgs, outs)]
    todo = [j for j in jobs if finished_in_folder(Path(j.out), j.config["steps"]) is None]
    for j in jobs if results else []:  # finished already: recorded here, as one process records them
        if j not in todo:
            record(j.out, results)
    units = deal(todo, processes, stacked)
    bar = tqdm(total=sum(c.steps for c in cfgs), disable=not progress, unit="step",
               desc=f"{cfgs[0].algo} {Path(cfgs[0].dataset).name} x{len(cfgs)} seeds"
               + (f", {len(units)} processes" if len(units) > 1 else ""))
    errors: list[BaseException] = []

    def done(unit: Job | SeedGroup, error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)
            bar.write(f"failed: {', '.join(j.out for j in _members(unit))}: {error}")

    line = LiveLine(bar)

    def live(_running: list) -> None:  # the steps the runs have logged (metrics.csv)
        line.show(n=sum(_logged_step(j) or 0 for j in jobs))

    live([])
    try:
        if units:
            _run_local(units, len(units), done, live)
        if errors:
            raise errors[0]
        summaries = [read_json(Path(j.out) / "summary.json", "run summary") for j in jobs]
        bar.n = sum(x["step"] for x in summaries)  # the logs lag by up to a logging interval
    finally:
        bar.close()
    return summaries


def _members(unit: Job | SeedGroup) -> list[Job]:
    return unit.members if isinstance(unit, SeedGroup) else [unit]


class LiveLine:
    """A progress bar redrawn at every poll of the running jobs on a terminal (its clock moves),
    but, written to a log file (a sweep under ``nohup``), only when what it shows moves: a
    line a second for hours would bury the log's few messages."""

    def __init__(self, bar: tqdm, tty: bool | None = None) -> None:
        self.bar, self.tty = bar, sys.stderr.isatty() if tty is None else tty

    def show(self, postfix: str | None = None, n: int | None = None) -> None:
        """Set the text after the bar and / or its count, and redraw as above."""
        if self.bar.disable:  # progress off: a disabled bar has no text to set
            return
        moved = (postfix is not None and postfix != self.bar.postfix) or (n is not None and n != self.bar.n)
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        if n is not None:
            self.bar.n = n
        if self.tty or moved:
            self.bar.refresh()


def live_progress(jobs: list[Job], recent_s: float = 600.0) -> str:
    """``run-name step/steps`` for each job whose ``metrics.csv`` was written in the last
    ``recent_s`` seconds (so a queued job's old, resumed log is not shown as running). Runs of
    one name in different folders (one seed on two datasets) show their folder too."""
    shown = []
    for j in jobs:
        if not _logged_lately(j, recent_s):
            continue
        step = _logged_step(j)
        if step is not None:  # None: header only, or mid-write
            shown.append((Path(j.out), f"{step}/{j.config['steps']}"))
    names = [out.name for out, _ in shown]
    parts = [f"{out.parent.name}/{out.name} {at}" if names.count(out.name) > 1 else f"{out.name} {at}"
             for out, at in shown]
    return ", ".join(parts)


#: Seconds between refreshes of the running jobs' steps in the progress line of a Ray sweep (a local
#: pool looks every second, for a stop signal).
POLL_S = 15.0


def _run_local(todo: list, workers: int, finished: Callable, live: Callable,
               pick: Callable[[list], object] | None = None, deadline: float | None = None) -> list:
    """Run ``todo`` on ``workers`` processes, each unit as a worker frees (``pick`` chooses which of
    those queued, None when none should start; default the first). At ``deadline`` every worker
    gets SIGTERM, so its run checkpoints its step and exits; returns the units stopped that way.
    A stop this process receives (Ctrl-C, SIGTERM; checked every second) is passed on the same way,
    then raised as :class:`cdp.runlog.RunInterrupted`."""
    ctx = get_context("spawn")  # fresh interpreters: no torch thread pools inherited
    threads = max(j.threads for j in todo)  # BLAS pools: the widest job's (each job sets torch's own count)
    queued, stopped = list(todo), []
    with StopSignals() as signals, ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                                       initializer=init_worker, initargs=(threads,)) as pool:
        pending: dict = {}
        stopping = False

        def fill() -> None:
            while queued and len(pending) < workers:
                unit = pick(queued) if pick is not None else queued[0]
                if unit is None:
                    return
                queued.remove(unit)
                pending[pool.submit(run_job, unit)] = unit

        fill()
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if not stopping and ((deadline is not None and time.time() >= deadline) or signals.signal is not None):
                stopping = True
                for proc in list(pool._processes.values()):  # the runs' own stop: checkpoint, then exit
                    proc.terminate()
                done, _ = wait(pending)
            live([j for f, j in pending.items() if f.running()])
            for fut in done:
                job = pending.pop(fut)
                err = fut.exception()
                if stopping and err is not None:
                    stopped.append(job)
                else:
                    finished(job, err)
            if not stopping:
                fill()
    if signals.signal is not None:
        raise RunInterrupted(f"stopped by {signal.Signals(signals.signal).name}: {len(stopped)} running job(s) "
                             "checkpointed the step they were on; the same command resumes them", signals.signal)
    return stopped


def _run_ray(todo: list, workers: int, address: str | None, finished: Callable, live: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'cdp[ray]'") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers * max(j.threads for j in todo), include_dashboard=False,
                     log_to_driver=False)
    task = ray.remote(max_retries=2, retry_exceptions=False)(run_job)
    refs = {task.options(num_cpus=j.threads, num_gpus=j.gpus).remote(j): j for j in todo}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
        live(list(refs.values()))  # which tasks run is the cluster's business: the recent logs say
        for ref in done:
            job = refs.pop(ref)
            try:
                ray.get(ref)
            except Exception as e:  # noqa: BLE001 - reported by finished(), other jobs go on
                finished(job, e)
            else:
                finished(job, None)
