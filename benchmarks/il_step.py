"""Imitation training step (forward + backward + AdamW + EMA, as the trainer runs it) per
backbone, with and without the contraction term (full batch and a 16-sample sub-batch), as
ratios measured in one run, and the latency of predicting one action chunk (DDIM, 10 steps)
for one state. On a CUDA device every step is also timed replayed as one CUDA graph
(cdp.capture.GraphedUpdate) and the chunk as a graphed call.

    python benchmarks/il_step.py [--quick] [--batch 128] [--action-dim 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import copy

import torch
from _common import ms_per_call, parse

from cdp.capture import GraphedCall, GraphedUpdate, graphs_available
from cdp.contraction import ContractionConfig
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
from cdp.il.trainer import PolicyStep

BACKBONES = {
    "UNet 32-64-128": dict(backbone="unet", unet_dims=(32, 64, 128)),
    "UNet 64-128-256": dict(backbone="unet", unet_dims=(64, 128, 256)),
    "DiT 64 x 4": dict(backbone="dit", dit_width=64, dit_depth=4, dit_heads=4),
    "DiT 128 x 4": dict(backbone="dit", dit_width=128, dit_depth=4, dit_heads=4),
    "MLP 3 x 256": dict(backbone="mlp"),
}
# the earlier imitation studies' estimator (Lanczos 4 through autograd: products="native",
# exact_max_dim=8), kept so these rows compare with earlier runs of this benchmark; finite
# differences and the library's defaults (the exact eigenvalue): benchmarks/any_network.py
_STUDIES = dict(products="native", exact_max_dim=8)
VARIANTS = {"DP": None, "CDP full batch": ContractionConfig(**_STUDIES),
            "CDP sub-batch 16": ContractionConfig(subbatch=16, **_STUDIES),
            # the exact eigenvalue (the chunk's full Jacobian) through autograd: benchmarks/estimator_accuracy.py
            "CDP sub-batch 16, exact": ContractionConfig(subbatch=16, products="native", exact_max_dim=1024),
            # the library's default: the exact eigenvalue by finite differences
            "CDP sub-batch 16, defaults": ContractionConfig(subbatch=16)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--action-dim", type=int, default=2)
    args, header = parse(ap)
    rounds, inner = (3, 2) if args.quick else (5, 4)
    B, d, obs_dim = args.batch, args.action_dim, 7
    print(f"{header}; batch {B}, chunk 16 x {d}; "
          f"median ms per training step; chunk latency for one state (DDIM 10 steps)\n")
    dev = args.device
    graphs = graphs_available(dev)
    if graphs:
        print("| backbone | variant | eager ms | graphed ms | graph speed-up | eager / DP | graphed / graphed DP "
              "| chunk latency eager / graphed (ms) |\n|---|---|---:|---:|---:|---:|---:|---:|")
    else:
        print("| backbone | variant | ms/step | ratio to DP | chunk latency (ms) |\n|---|---|---:|---:|---:|")
    batch = {"obs": torch.randn(B, 2, obs_dim, device=dev), "act": torch.rand(B, 16, d, device=dev) * 2 - 1}
    for name, kw in BACKBONES.items():
        torch.manual_seed(0)
        fns = {}
        for k, c in VARIANTS.items():
            for mode in ("eager", "graphed") if graphs else ("eager",):
                pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=obs_dim, action_dim=d, contraction=c,
                                                            **kw)).to(dev)
                step = PolicyStep(pol, copy.deepcopy(pol).requires_grad_(False), torch.optim.AdamW(pol.parameters(), 1e-4))
                fns[(k, mode)] = GraphedUpdate(step) if mode == "graphed" else step.update
        for key, fn in list(fns.items()):
            try:
                for _ in range(5):  # graphs: 3 eager warm-up steps, then recording
                    fn(batch)
            except RuntimeError as e:  # a variant that cannot be recorded: its eager row stays
                if key[1] != "graphed":
                    raise
                print(f"({name}, {key[0]}: not graphed: {str(e).splitlines()[0][:120]})", flush=True)
                del fns[key]
        times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k].append(ms_per_call(lambda: fn(batch), inner, dev))
        med = {k: statistics.median(v) for k, v in times.items()}
        one = batch["obs"][:1]
        pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=obs_dim, action_dim=d, **kw)).to(dev)
        with torch.inference_mode():
            pol.predict_chunk(one)
            lat = ms_per_call(lambda: pol.predict_chunk(one), 10, dev)
            if graphs:
                chunk = GraphedCall(pol.predict_chunk)
                for _ in range(3):
                    chunk(one)
                lat_g = ms_per_call(lambda: chunk(one), 10, dev)
        for k in VARIANTS:
            e = med[(k, "eager")]
            if graphs:
                g = med.get((k, "graphed"), float("nan"))
                lats = f"{lat:.1f} / {lat_g:.1f}" if k == "DP" else ""
                print(f"| {name} | {k} | {e:.1f} | {g:.1f} | {e / g:.1f}x | {e / med[('DP', 'eager')]:.2f}x "
                      f"| {g / med[('DP', 'graphed')]:.2f}x | {lats} |", flush=True)
            else:
                print(f"| {name} | {k} | {e:.0f} | {e / med[('DP', 'eager')]:.2f}x | {f'{lat:.1f}' if k == 'DP' else ''} |",
                      flush=True)


if __name__ == "__main__":
    main()
