"""Action-selection latency: what a control loop waits for.

- EDP / CDP agent (MLP 3 x 256, DPM-Solver++ 15 steps, argmax of min Q over N candidates): one
  state and a batch of 10 states (the vectorised evaluation), N = 100 (the official setting) and
  N = 1;
- Diffusion Policy chunk prediction (DDIM 10 steps) with the UNet and DiT backbones for a 16 x 7
  chunk (Lift / Can) and a 16 x 2 chunk (MultiReach): one state and 50 states.

Median over repeats, ms, ``torch.inference_mode``.

    python benchmarks/action_selection.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import parse

from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
from cdp.rl.edp import EDP, EDPConfig


def median_ms(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    args, header = parse(ap)
    reps = 5 if args.quick else 20
    print(f"{header}; median ms per call\n")
    print("| policy | states | candidates / chunk | ms |\n|---|---:|---|---:|")
    torch.manual_seed(0)
    with torch.inference_mode():
        for n_cand in (100, 1):
            agent = EDP(11, 3, EDPConfig(n_candidates=n_cand))
            for states in (1, 10):
                obs = torch.randn(states, 11)
                print(f"| EDP/CDP MLP (hopper 11/3) | {states} | {n_cand} candidates | "
                      f"{median_ms(lambda: agent.act(obs), reps):.1f} |", flush=True)
        for d in (7, 2):
            for name, kw in (("UNet 32-64-128", dict(backbone="unet", unet_dims=(32, 64, 128))),
                             ("DiT 64 x 4", dict(backbone="dit", dit_width=64, dit_depth=4))):
                pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=19, action_dim=d, **kw))
                for states in (1, 50):
                    obs = torch.randn(states, 2, 19)
                    print(f"| DP {name} | {states} | 16 x {d} chunk | {median_ms(lambda: pol.predict_chunk(obs), reps):.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
