"""Several seeds of one offline-RL config trained side by side in one process.

Every run keeps what it would have alone: its own data cut, batch order, generators (seeded as
the run alone seeds torch's), network, optimiser, run folder, logs, checkpoints and record; a
run of an ensemble and the same run trained alone leave the same files. On a GPU each run's step
(a CUDA graph) is queued on its own CUDA stream, so the small kernels of N runs overlap on the
device instead of queueing behind each other, and the losses are read only after every run's
step is queued. On the CPU the runs take turns.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import dataclass_defaults, fingerprint
from ..runlog import RunInterrupted, StopSignals, open_run
from ..runtime import resolve_device
from .trainer import DataTransform, TrainConfig, _Run, check_spaces, load_dataset, make_agent


def check_seeds_only(cfgs: list[TrainConfig]) -> None:
    """Runs of an ensemble differ in their seed alone (and are distinct)."""
    if not cfgs:
        raise ValueError("an ensemble needs at least one run")
    first = asdict(cfgs[0])
    for cfg in cfgs[1:]:
        diff = [f.name for f in fields(TrainConfig) if f.name != "seed" and asdict(cfg)[f.name] != first[f.name]]
        if diff:
            raise ValueError(f"runs of an ensemble may differ in their seed alone; these differ in {diff}")
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"an ensemble's seeds must be distinct, got {seeds}")


def train_ensemble(cfgs: list[TrainConfig], outs: list[str | Path], progress: bool = True,
                   reenter: bool = True) -> list[dict]:
    """Train (or resume) the runs ``cfgs`` (one config, several seeds) into the folders ``outs``
    together; returns their summaries, in order. Each folder is claimed and checked as
    :func:`cdp.rl.trainer.train` claims one; a stop signal checkpoints every run."""
    check_seeds_only(cfgs)
    if len(outs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} runs need {len(cfgs)} folders, got {len(outs)}")
    cfg0 = cfgs[0]
    full, env_from_data = load_dataset(cfg0.dataset)
    env_id = cfg0.env_id or env_from_data
    if env_id is None:
        raise ValueError("the dataset names no environment: pass env_id")
    check_spaces(full, env_id)
    transform = DataTransform.for_run(cfg0, full)
    device = resolve_device(cfg0.device)
    make_agent(cfg0, full.obs_dim, full.act_dim, "cpu")  # a setting the agent rejects: before anything is written
    cuts = [transform.data(full.fraction(c.fraction, seed=c.seed, cut=c.data_cut)) for c in cfgs]
    with contextlib.ExitStack() as claimed:
        for cfg, out, data in zip(cfgs, outs, cuts):
            seen = fingerprint([data.observations, data.actions, data.rewards, data.next_observations, data.terminals])
            claimed.enter_context(open_run(Path(out), asdict(cfg), dataclass_defaults(TrainConfig), seen, reenter))
        runs = [_Run(cfg, Path(out), data, env_id, device, transform, private_rng=True)
                for cfg, out, data in zip(cfgs, outs, cuts)]
        streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in runs]
        total = sum(c.steps for c in cfgs)
        bar = tqdm(total=total, initial=sum(r.agent.step for r in runs), disable=not progress,
                   desc=f"{cfg0.algo} {Path(cfg0.dataset).name} x{len(runs)} seeds")
        with StopSignals() as stop:
            try:
                while active := [(r, s) for r, s in zip(runs, streams) if not r.done]:
                    queued = []
                    for r, s in active:  # queue every run's step before reading any
                        with _on(s):
                            queued.append(r.launch())
                    stopped: RunInterrupted | None = None
                    for (r, s), losses in zip(active, queued):
                        try:
                            with _on(s):
                                r.finish(losses, stop)
                        except RunInterrupted as e:  # checkpoint every run before stopping
                            stopped = stopped or e
                        bar.update(1)
                    if stopped is not None:
                        raise stopped
            finally:
                bar.close()
                for r in runs:
                    r.close()
        return [r.summary() for r in runs]


def _on(stream: torch.cuda.Stream | None):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
