"""Action-selection latency: what a control loop waits for.

- EDP / CDP agent (MLP 3 x 256, DPM-Solver++ 15 steps, argmax of min Q over N candidates): one
  state and a batch of 10 states (the vectorised evaluation), N = 100 (the official setting) and
  N = 1;
- Diffusion Policy chunk prediction (DDIM 10 steps) with the UNet and DiT backbones for a 16 x 7
  chunk (Lift / Can) and a 16 x 2 chunk (MultiReach): one state and 50 states.

Median over repeats, ms, ``torch.inference_mode``. With ``--bf16`` each row is also timed under
``torch.autocast("cpu", dtype=torch.bfloat16)`` in the same run (CPUs with AMX / AVX-512 BF16
run bf16 matmuls several times faster; the sampled actions then carry bf16 rounding).

On a CUDA device each row is also timed replayed as a CUDA graph (cdp.capture.GraphedCall).

    python benchmarks/action_selection.py [--quick] [--bf16] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import ms_per_call, parse

from cdp.capture import GraphedCall, graphs_available

from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
from cdp.rl.edp import EDP, EDPConfig


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    return statistics.median(ms_per_call(fn, 1, device) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bf16", action="store_true", help="also time each row under bf16 autocast")
    args, header = parse(ap)
    reps = 5 if args.quick else 20
    dev = args.device
    print(f"{header}; median ms per call\n")
    graphs = graphs_available(dev) and not args.bf16
    if args.bf16:
        print("| policy | states | candidates / chunk | ms | bf16 autocast ms | speed-up |\n|---|---:|---|---:|---:|---:|")
    elif graphs:
        print("| policy | states | candidates / chunk | eager ms | graphed ms | speed-up |\n|---|---:|---|---:|---:|---:|")
    else:
        print("| policy | states | candidates / chunk | ms |\n|---|---:|---|---:|")

    def cells(f, x) -> str:
        fn = lambda: f(x)  # noqa: E731
        fp32 = median_ms(fn, reps, dev)
        if graphs:
            graphed = GraphedCall(f)
            for _ in range(3):  # 2 eager warm-up calls, then recording
                graphed(x)
            g = median_ms(lambda: graphed(x), reps, dev)
            return f"{fp32:.1f} | {g:.2f} | {fp32 / g:.1f}x |"
        if not args.bf16:
            return f"{fp32:.1f} |"
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            bf16 = median_ms(fn, reps, dev)
        return f"{fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |"

    torch.manual_seed(0)
    with torch.inference_mode():
        for n_cand in (100, 1):
            agent = EDP(11, 3, EDPConfig(n_candidates=n_cand), dev)
            for states in (1, 10):
                obs = torch.randn(states, 11, device=dev)
                print(f"| EDP/CDP MLP (hopper 11/3) | {states} | {n_cand} candidates | {cells(agent.act, obs)}",
                      flush=True)
        for d in (7, 2):
            for name, kw in (("UNet 32-64-128", dict(backbone="unet", unet_dims=(32, 64, 128))),
                             ("DiT 64 x 4", dict(backbone="dit", dit_width=64, dit_depth=4))):
                pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=19, action_dim=d, **kw)).to(dev)
                for states in (1, 50):
                    obs = torch.randn(states, 2, 19, device=dev)
                    print(f"| DP {name} | {states} | 16 x {d} chunk | {cells(pol.predict_chunk, obs)}", flush=True)


if __name__ == "__main__":
    main()
