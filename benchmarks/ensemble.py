"""Seeds in one process against one process per seed: EDP updates per second per seed.

One process (torch's default threads: every core), two ways: N agents with their own generators
stepping in turn (`cdp.rl.ensemble`'s default on the CPU), and the same N agents stacked into
one vectorised model (`cdp.rl.stacked`, `--stacked`). Separate: N processes started together
(one thread each), each stepping one agent (what `cdp sweep` does). Batch 256, hopper shapes
(11/3), every step's losses read, evaluation and logging left out everywhere.

    python benchmarks/ensemble.py [--seeds 4] [--steps 50] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _common import parse

from cdp.capture import host_floats
from cdp.rl.edp import EDP, EDPConfig
from cdp.rl.stacked import StackedEDP


def agents_and_batch(n: int, device: torch.device):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        agent = EDP(11, 3, EDPConfig(), device)
        agent.own_generators()
        out.append(agent)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(256, 11, generator=g), "act": torch.rand(256, 3, generator=g) * 2 - 1,
             "rew": torch.randn(256, generator=g), "next_obs": torch.randn(256, 11, generator=g), "done": torch.zeros(256)}
    return out, {k: v.to(device) for k, v in batch.items()}


def together(n: int, steps: int, device: torch.device, stacked: bool = False) -> float:
    """Steps per second per seed, N seeds in this process (in turn, or stacked)."""
    agents, batch = agents_and_batch(n, device)
    stack = StackedEDP(agents) if stacked else None

    def round_() -> None:
        if stack is not None:
            for losses in stack.update([batch] * n):
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


def worker(steps: int, device: torch.device, start_at: float) -> float:
    torch.set_num_threads(1)  # one core per process: N processes share the machine's cores
    (agent,), batch = agents_and_batch(1, device)
    for _ in range(3):
        host_floats(agent.update(batch))
    while time.time() < start_at:  # start the timed part together
        time.sleep(0.001)
    t0 = time.perf_counter()
    for _ in range(steps):
        host_floats(agent.update(batch))
    return steps / (time.perf_counter() - t0)


def separate(n: int, steps: int, device: torch.device) -> float:
    """Steps per second per seed, N processes started together (mean over them)."""
    start_at = time.time() + 15.0 + 1.0 * n  # time for every process to import, build and warm up
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--steps", str(steps), "--device", str(device),
                               "--start-at", str(start_at)], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in procs]
    return sum(rates) / len(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args, header = parse(ap)
    if args.worker:
        print(json.dumps({"steps_per_s": worker(args.steps, args.device, args.start_at)}))
        return
    print(f"{header}; EDP updates, batch 256, {args.seeds} seeds, {args.steps} timed steps each\n")
    print("| N seeds | one process, in turn | one process, stacked | N processes | stacked / N processes |\n"
          "|---:|---:|---:|---:|---:|")
    one = together(args.seeds, args.steps, args.device)
    stacked = together(args.seeds, args.steps, args.device, stacked=True)
    print(f"(one process: {one:.1f} in turn, {stacked:.1f} stacked; steps/s per seed)", flush=True)
    sep = separate(args.seeds, args.steps, args.device)
    print(f"| {args.seeds} | {one:.1f} | {stacked:.1f} | {sep:.1f} | {stacked / sep:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
