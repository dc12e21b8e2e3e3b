"""The term's cost on a network it knows nothing about: a Hugging Face diffusers ``UNet1DModel``
over ``[batch, 7, 16]`` action chunks (a DDPM scheduler, epsilon prediction), one training step =
the usual epsilon loss (+ gamma * the term through :class:`DiffusersDenoiser`, i.e. the generic
autograd path), backward, AdamW; as ratios to the plain step measured in one run, interleaved.

    python benchmarks/diffusers_step.py [--quick] [--batch 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import ms_per_call, parse

from cdp.contraction import ContractionConfig, ContractionRegularizer
from cdp.diffusion.from_diffusers import (DiffusersDenoiser, prediction_from_scheduler, schedule_from_scheduler,
                                          times_from_timesteps)

SIZES = {"UNet1DModel 32-64": (32, 64), "UNet1DModel 64-128-256": (64, 128, 256)}
# autograd's double backward and Lanczos 4 (the generic path before finite differences; those and
# the library's defaults: benchmarks/any_network.py)
_AUTOGRAD = dict(products="autograd", exact_max_dim=8)
VARIANTS = {"plain": None, "term, full batch": ContractionConfig(**_AUTOGRAD),
            "term, sub-batch 16": ContractionConfig(subbatch=16, **_AUTOGRAD),
            "term, sub-batch 16, exact": ContractionConfig(subbatch=16, products="autograd", exact_max_dim=1024)}


def unet(channels: tuple[int, ...]):
    from diffusers import UNet1DModel

    n = len(channels)
    return UNet1DModel(in_channels=7, out_channels=7, extra_in_channels=0, block_out_channels=channels,
                       down_block_types=("DownResnetBlock1D",) * n, up_block_types=("UpResnetBlock1D",) * (n - 1),
                       mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
                       time_embedding_type="positional", use_timestep_embedding=True, flip_sin_to_cos=False,
                       freq_shift=1.0, layers_per_block=1, norm_num_groups=8)


def main() -> None:
    from diffusers import DDPMScheduler

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    args, header = parse(ap)
    rounds, inner = (3, 2) if args.quick else (5, 4)
    dev, B = args.device, args.batch
    print(f"{header}; batch {B}, chunks [7, 16]; median ms per training step\n")
    print("| network | variant | ms/step | ratio to plain |\n|---|---|---:|---:|")
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(B, 7, 16, generator=g) * 2 - 1).to(dev)
    noise, k = torch.randn(B, 7, 16, generator=g).to(dev), torch.randint(0, 100, (B,), generator=g).to(dev)
    noisy = sched.add_noise(x0.cpu(), noise.cpu(), k.cpu()).to(dev)
    t = times_from_timesteps(k, 100)
    for name, ch in SIZES.items():
        steps = {}
        for v, cfg in VARIANTS.items():
            torch.manual_seed(0)
            net = unet(ch).to(dev)
            opt = torch.optim.AdamW(net.parameters(), 1e-4)
            term = ContractionRegularizer(schedule_from_scheduler(sched), prediction_from_scheduler(sched), cfg) if cfg else None

            def step(net=net, opt=opt, term=term):
                loss = torch.nn.functional.mse_loss(net(noisy, k).sample, noise)
                if term is not None:
                    loss = loss + term(DiffusersDenoiser(net, 100), noisy, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()  # warm-up
            steps[v] = step
        times = {v: [] for v in steps}
        for _ in range(rounds):  # interleaved: every variant sees the same machine state
            for v, fn in steps.items():
                times[v].append(ms_per_call(fn, inner, dev))
        med = {v: statistics.median(x) for v, x in times.items()}
        for v in VARIANTS:
            print(f"| {name} | {v} | {med[v]:.0f} | {med[v] / med['plain']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
