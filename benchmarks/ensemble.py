"""Seeds trained together against one process per seed: updates per second per seed (EDP by
default; `--algo` for the others).

One process (torch's default threads: every core), two ways: N agents with their own generators
stepping in turn, and the same N agents stacked into one vectorised model (`cdp.rl.stacked`).
Separate: N processes started together (one thread each), each stepping one agent (what
`cdp sweep` does). Dealt out: the seeds dealt to one process per core (`cores // processes`
threads each), each stepping its share in turn or stacked (what `cdp rl train --seeds` does on a
CPU; on a GPU it is the one process). Batch 256, hopper shapes (11/3), every step's losses read,
evaluation and logging left out everywhere. On a CUDA device a lone agent's update and a stack's
are replayed as CUDA graphs (as the trainers run them); seeds in turn run eagerly.

    python benchmarks/ensemble.py [--seeds 4] [--steps 50] [--device cuda] [--algo edp|dql|idql|bc]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _common import parse

from cdp.capture import GraphedUpdate, graphs_available, host_floats
from cdp.rl.bc import BC, BCConfig
from cdp.rl.edp import EDP, EDPConfig
from cdp.rl.iql import IDQL, IDQLConfig
from cdp.rl.stacked import stack
from cdp.runtime import usable_cores

ALGOS = {"edp": lambda d: EDP(11, 3, EDPConfig(), d), "dql": lambda d: EDP(11, 3, EDPConfig.dql(), d),
         "idql": lambda d: IDQL(11, 3, IDQLConfig(), d), "bc": lambda d: BC(11, 3, BCConfig(), d)}


def agents_and_batch(n: int, device: torch.device, algo: str = "edp"):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        agent = ALGOS[algo](device)
        agent.own_generators()
        out.append(agent)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(256, 11, generator=g), "act": torch.rand(256, 3, generator=g) * 2 - 1,
             "rew": torch.randn(256, generator=g), "next_obs": torch.randn(256, 11, generator=g), "done": torch.zeros(256)}
    return out, {k: v.to(device) for k, v in batch.items()}


def together(n: int, steps: int, device: torch.device, stacked: bool = False, algo: str = "edp") -> float:
    """Steps per second per seed, N seeds in this process (in turn, or stacked)."""
    agents, batch = agents_and_batch(n, device, algo)
    stacker = stack(agents, graphs=graphs_available(device)) if stacked else None

    def round_() -> None:
        if stacker is not None:
            for losses in stacker.update([batch] * n):
                host_floats(losses)
            return
        for a in agents:
            host_floats(a.update(batch))

    for _ in range(3):
        round_()
    t0 = time.perf_counter()
    for _ in range(steps):
        round_()
    return steps / (time.perf_counter() - t0)


def worker(steps: int, device: torch.device, start_at: float, share: int = 1, stacked: bool = False,
           threads: int = 1, algo: str = "edp") -> float:
    """Steps per second per seed of one process on ``threads`` threads stepping ``share`` seeds (one:
    a lone agent; more: in turn, or stacked)."""
    torch.set_num_threads(threads)
    agents, batch = agents_and_batch(share, device, algo)
    graphs = graphs_available(device)
    stacker = stack(agents, graphs=graphs) if stacked and share > 1 else None
    # a lone run on a GPU replays its update as a CUDA graph, as the trainer does
    updates = [GraphedUpdate(a) if graphs and share == 1 else a.update for a in agents]

    def step() -> None:
        if stacker is None:
            for update in updates:
                host_floats(update(batch))
        else:
            for losses in stacker.update([batch] * share):
                host_floats(losses)

    for _ in range(3):
        step()
    while time.time() < start_at:  # start the timed part together
        time.sleep(0.001)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def processes(n: int, steps: int, device: torch.device, procs: int, stacked: bool = False,
              algo: str = "edp") -> float:
    """Steps per second per seed, the ``n`` seeds dealt out to ``procs`` processes started together
    (``cores // procs`` threads each; mean over the seeds)."""
    shares = [len(range(i, n, procs)) for i in range(procs)]
    threads = max(1, usable_cores() // procs)
    start_at = time.time() + 15.0 + 1.0 * procs  # time for every process to import, build and warm up
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps), "--device", str(device),
           "--start-at", str(start_at), "--threads", str(threads), "--algo", algo] + (["--stacked"] if stacked else [])
    runs = [subprocess.Popen(cmd + ["--share", str(k)], stdout=subprocess.PIPE, text=True) for k in shares]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in runs]
    return sum(r * k for r, k in zip(rates, shares)) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--algo", choices=sorted(ALGOS), default="edp")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--share", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--stacked", action="store_true", help=argparse.SUPPRESS)
    args, header = parse(ap)
    if args.worker:
        rate = worker(args.steps, args.device, args.start_at, args.share, args.stacked, args.threads, args.algo)
        print(json.dumps({"steps_per_s": rate}))
        return
    cores = usable_cores()
    procs = min(args.seeds, cores) if args.device.type == "cpu" else 1  # `cdp rl train --seeds`' default
    print(f"{header}; {args.algo.upper()} updates, batch 256, {args.seeds} seeds, {args.steps} timed steps each; "
          f"steps/s per seed\n")
    print(f"| N seeds | one process, in turn | one process, stacked | N processes | {procs} processes, in turn "
          f"| {procs} processes, stacked | `--seeds` default / N processes |\n|---:|---:|---:|---:|---:|---:|---:|")
    one = together(args.seeds, args.steps, args.device, algo=args.algo)
    stacked = together(args.seeds, args.steps, args.device, stacked=True, algo=args.algo)
    print(f"(one process: {one:.1f} in turn, {stacked:.1f} stacked)", flush=True)
    sep = processes(args.seeds, args.steps, args.device, args.seeds, algo=args.algo)
    dealt = processes(args.seeds, args.steps, args.device, procs, algo=args.algo) if procs > 1 else one
    dealt_stacked = (processes(args.seeds, args.steps, args.device, procs, stacked=True, algo=args.algo)
                     if procs > 1 else stacked)
    default = dealt if args.device.type == "cpu" else stacked  # cdp rl train --seeds: in turn on a CPU
    print(f"| {args.seeds} | {one:.1f} | {stacked:.1f} | {sep:.1f} | {dealt:.1f} | {dealt_stacked:.1f} | "
          f"{default / sep:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
