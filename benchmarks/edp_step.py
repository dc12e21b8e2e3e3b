"""Whole offline-RL updates (EDP: critic with 15-step DPM-Solver++ target sampling + actor) with
and without the contraction term, as ratios measured in one run (interleaved rounds, median).
On a CUDA device every row is also timed replayed as one CUDA graph (cdp.capture.GraphedUpdate),
with BC, DQL and IDQL beside it.

    python benchmarks/edp_step.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import ms_per_call, parse

from cdp.capture import GraphedUpdate, graphs_available
from cdp.contraction import ContractionConfig
from cdp.rl.bc import BC, BCConfig
from cdp.rl.edp import EDP, EDPConfig
from cdp.rl.iql import IDQL, IDQLConfig

SHAPES = {"hopper (11/3)": (11, 3), "walker2d (17/6)": (17, 6)}
VARIANTS = {"EDP": lambda o, a, d: EDP(o, a, EDPConfig(), d),
            "CDP t<0.1": lambda o, a, d: EDP(o, a, EDPConfig(contraction=ContractionConfig(t_max=0.1)), d),
            "CDP every t": lambda o, a, d: EDP(o, a, EDPConfig(contraction=ContractionConfig()), d)}
GPU_EXTRA = {"BC": lambda o, a, d: BC(o, a, BCConfig(), d),
             "DQL": lambda o, a, d: EDP(o, a, EDPConfig.dql(), d),
             "IDQL": lambda o, a, d: IDQL(o, a, IDQLConfig(), d)}


def main() -> None:
    ap = argparse.ArgumentParser()
    args, header = parse(ap)
    rounds, inner = (3, 5) if args.quick else (7, 10)
    dev = args.device
    graphs = graphs_available(dev)
    print(f"{header}; batch 256; median ms per update\n")
    if graphs:
        print("| shape | variant | eager ms | graphed ms | graph speed-up | eager / EDP | graphed / graphed EDP |\n"
              "|---|---|---:|---:|---:|---:|---:|")
    else:
        print("| shape | variant | ms/update | ratio to EDP |\n|---|---|---:|---:|")
    for name, (o, a) in SHAPES.items():
        torch.manual_seed(0)
        batch = {"obs": torch.randn(256, o), "act": torch.rand(256, a) * 2 - 1, "rew": torch.randn(256),
                 "next_obs": torch.randn(256, o), "done": torch.zeros(256)}
        batch = {k: v.to(dev) for k, v in batch.items()}
        makers = {**VARIANTS, **(GPU_EXTRA if graphs else {})}
        fns = {}
        for k, make in makers.items():
            fns[(k, "eager")] = make(o, a, dev).update
            if graphs:
                fns[(k, "graphed")] = GraphedUpdate(make(o, a, dev))
        times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            for _ in range(5):  # graphs: 3 eager warm-up steps, then recording
                fn(batch)
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k].append(ms_per_call(lambda: fn(batch), inner, dev))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in makers:
            e = med[(k, "eager")]
            if graphs:
                g = med[(k, "graphed")]
                print(f"| {name} | {k} | {e:.2f} | {g:.2f} | {e / g:.1f}x | {e / med[('EDP', 'eager')]:.2f}x "
                      f"| {g / med[('EDP', 'graphed')]:.2f}x |", flush=True)
            else:
                print(f"| {name} | {k} | {e:.1f} | {e / med[('EDP', 'eager')]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
