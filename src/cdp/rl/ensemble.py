"""Several seeds of one offline-RL config trained side by side in one process.

Every run keeps what it would have alone: its own data cut, batch order, generators (seeded as
the run alone seeds torch's), network, optimiser, run folder, logs, checkpoints and record.

Two ways to step them. In turn (the default on a CPU, where ``cdp rl train --seeds`` deals the
seeds out to one such process per core: :func:`cdp.sweep.train_seeds`): one run's update after
another; a run of the ensemble and the same run trained alone leave the same files, to the bit.
Stacked (:mod:`cdp.rl.stacked`; the default on a GPU, where the seeds' small kernels merge into
N-wide ones, the whole N-seed update replayed as one CUDA graph unless the config turns graphs
off): one vectorised update for all seeds, the same files to float rounding.

Taking turns on a GPU is refused: that version (each run's CUDA graph on its own stream)
crashed with an illegal memory access on an H200, and which of its parts causes it is not known.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..capture import graphs_available
from ..runlog import RunInterrupted, StopSignals
from ..runtime import resolve_device
from .stacked import stack, stack_supported
from .trainer import TrainConfig, _Run, claim_run, load_run_data, make_agent, run_cut


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
                   reenter: bool = True, stacked: bool | None = None) -> list[dict]:
    """Train (or resume) the runs ``cfgs`` (one config, several seeds) into the folders ``outs``
    together; returns their summaries, in order. Each folder is claimed and checked as
    :func:`cdp.rl.trainer.train` claims one; a stop signal checkpoints every run. ``stacked``:
    one vectorised update for all seeds (True), in turn (False), or None: stacked on a GPU, in
    turn on a CPU (where one-thread stacking saves little: ``benchmarks/ensemble.py``; to use
    several cores, deal the seeds out to processes, :func:`cdp.sweep.train_seeds`). Stacked
    runs resumed from different steps: the ones behind first step alone up to the furthest."""
    check_seeds_only(cfgs)
    if len(outs) != len(cfgs):
        raise ValueError(f"{len(cfgs)} runs need {len(cfgs)} folders, got {len(outs)}")
    cfg0 = cfgs[0]
    device = resolve_device(cfg0.device)
    stacks = device.type != "cpu" if stacked is None else stacked
    if device.type != "cpu" and not stacks:
        raise ValueError(f"seeds taking turns run on the CPU only, not on {device} (see cdp.rl.ensemble); "
                         "stack them (stacked=True) or train them as separate runs there")
    full, env_id, transform = load_run_data(cfg0)
    cuts = [run_cut(c, full, transform) for c in cfgs]
    if stacks:  # refused before any run folder is made (fresh agents; steps are checked once loaded)
        refuse_unstackable(cfgs, cuts[0])
    with contextlib.ExitStack() as claimed:
        for cfg, out, data in zip(cfgs, outs, cuts):
            claimed.enter_context(claim_run(cfg, Path(out), data, reenter))
        runs = [_Run(cfg, Path(out), data, env_id, device, transform, private_rng=True, eager=stacks)
                for cfg, out, data in zip(cfgs, outs, cuts)]
        stacker = None
        lead = max(r.agent.step for r in runs)  # stacked: runs resumed from earlier steps first catch up alone
        total = sum(c.steps for c in cfgs)
        bar = tqdm(total=total, initial=sum(r.agent.step for r in runs), disable=not progress,
                   desc=f"{cfg0.algo} {Path(cfg0.dataset).name} x{len(runs)} seeds" + (" stacked" if stacks else ""))
        with StopSignals() as stop:
            try:
                while active := [r for r in runs if not r.done]:
                    if stacks and stacker is None and all(r.agent.step == lead for r in runs):
                        stacker = stack([r.agent for r in runs],  # checks them again
                                        graphs=cfg0.graphs and graphs_available(device))
                    if stacker is not None:  # the seeds share one step count and budget: all or none active
                        losses = stacker.update([r.batch() for r in runs])
                    else:
                        if stacks:
                            active = [r for r in active if r.agent.step < lead]
                        losses = [None] * len(active)
                    stopped: RunInterrupted | None = None
                    saved = []
                    for r, loss in zip(active, losses):
                        try:
                            r.finish(r.launch() if loss is None else loss, stop)
                        except RunInterrupted as e:  # checkpoint every run before stopping
                            stopped = stopped or e
                            saved.append(r)
                        bar.update(1)
                    if stopped is not None:
                        # the stop came after the step of the runs before it ended: checkpoint those too
                        for r in runs:
                            if r not in saved and not r.done:
                                r.save()
                        raise stopped
            finally:
                bar.close()
                for r in runs:
                    r.close()
        return [r.summary() for r in runs]


def refuse_unstackable(cfgs: list[TrainConfig], data=None) -> None:
    """A ``ValueError`` saying why, unless fresh agents of ``cfgs`` stack (:func:`stack_supported`;
    steps are checked once runs are loaded). ``data``: a cut of the runs' data, for its dimensions
    (default: loaded)."""
    if data is None:
        full, _, transform = load_run_data(cfgs[0])
        data = run_cut(cfgs[0], full, transform)
    with torch.random.fork_rng(devices=[]):
        probe = [make_agent(c, data.obs_dim, data.act_dim) for c in cfgs[:2]]
    for agent in probe:
        agent.own_generators()
    why = stack_supported(probe)
    if why is not None:
        raise ValueError(f"these runs cannot be stacked ({why}); train them in turn on a CPU or as separate runs")
