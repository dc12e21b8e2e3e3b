"""Imitation training step (forward + backward + AdamW) per backbone, with and without the
contraction term (full batch and a 16-sample sub-batch), as ratios measured in one run, and the
latency of predicting one action chunk (DDIM, 10 steps) for one state.

    python benchmarks/il_step.py [--quick] [--batch 128] [--action-dim 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import ms_per_call, parse

from cdp.contraction import ContractionConfig
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig

BACKBONES = {
    "UNet 32-64-128": dict(backbone="unet", unet_dims=(32, 64, 128)),
    "UNet 64-128-256": dict(backbone="unet", unet_dims=(64, 128, 256)),
    "DiT 64 x 4": dict(backbone="dit", dit_width=64, dit_depth=4, dit_heads=4),
    "DiT 128 x 4": dict(backbone="dit", dit_width=128, dit_depth=4, dit_heads=4),
    "MLP 3 x 256": dict(backbone="mlp"),
}
VARIANTS = {"DP": None, "CDP full batch": ContractionConfig(), "CDP sub-batch 16": ContractionConfig(subbatch=16)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--action-dim", type=int, default=2)
    args, header = parse(ap)
    rounds, inner = (3, 2) if args.quick else (5, 4)
    B, d, obs_dim = args.batch, args.action_dim, 7
    print(f"{header}; batch {B}, chunk 16 x {d}; "
          f"median ms per training step; chunk latency for one state (DDIM 10 steps)\n")
    print("| backbone | variant | ms/step | ratio to DP | chunk latency (ms) |\n|---|---|---:|---:|---:|")
    dev = args.device
    obs, act = torch.randn(B, 2, obs_dim, device=dev), torch.rand(B, 16, d, device=dev) * 2 - 1
    for name, kw in BACKBONES.items():
        torch.manual_seed(0)
        pols = {k: DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=obs_dim, action_dim=d, contraction=c, **kw)).to(dev)
                for k, c in VARIANTS.items()}
        opts = {k: torch.optim.AdamW(p.parameters(), 1e-4) for k, p in pols.items()}

        def step(k: str) -> None:
            loss = pols[k].compute_loss(obs, act)["loss"]
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()

        for k in pols:
            step(k)
        times: dict[str, list[float]] = {k: [] for k in pols}
        for _ in range(rounds):
            for k in pols:
                times[k].append(ms_per_call(lambda: step(k), inner, dev))
        med = {k: statistics.median(v) for k, v in times.items()}
        one = obs[:1]
        with torch.inference_mode():
            pols["DP"].predict_chunk(one)
            lat = ms_per_call(lambda: pols["DP"].predict_chunk(one), 10, dev)
        for k, v in med.items():
            print(f"| {name} | {k} | {v:.0f} | {v / med['DP']:.2f}x | {lat if k == 'DP' else float('nan'):.1f} |"
                  .replace("| nan |", "| |"), flush=True)


if __name__ == "__main__":
    main()
