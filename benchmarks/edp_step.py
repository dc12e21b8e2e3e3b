"""Whole EDP update (critic with 15-step DPM-Solver++ target sampling + actor) with and without
the contraction term, as ratios measured in one run (interleaved rounds, median).

    python benchmarks/edp_step.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import ms_per_call, parse

from cdp.contraction import ContractionConfig
from cdp.rl.edp import EDP, EDPConfig

SHAPES = {"hopper (11/3)": (11, 3), "walker2d (17/6)": (17, 6)}
VARIANTS = {"EDP": None, "CDP t<0.1": ContractionConfig(t_max=0.1), "CDP every t": ContractionConfig()}


def main() -> None:
    ap = argparse.ArgumentParser()
    args, header = parse(ap)
    rounds, inner = (3, 5) if args.quick else (7, 10)
    dev = args.device
    print(f"{header}; batch 256; median ms per update\n")
    print("| shape | variant | ms/update | ratio to EDP |\n|---|---|---:|---:|")
    for name, (o, a) in SHAPES.items():
        torch.manual_seed(0)
        batch = {"obs": torch.randn(256, o), "act": torch.rand(256, a) * 2 - 1, "rew": torch.randn(256),
                 "next_obs": torch.randn(256, o), "done": torch.zeros(256)}
        batch = {k: v.to(dev) for k, v in batch.items()}
        agents = {k: EDP(o, a, EDPConfig(contraction=c), dev) for k, c in VARIANTS.items()}
        times: dict[str, list[float]] = {k: [] for k in agents}
        for ag in agents.values():
            ag.update(batch)
        for _ in range(rounds):
            for k, ag in agents.items():
                times[k].append(ms_per_call(lambda: ag.update(batch), inner, dev))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"| {name} | {k} | {v:.1f} | {v / med['EDP']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
