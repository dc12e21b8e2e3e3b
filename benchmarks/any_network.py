"""The term on networks the library knows nothing about, through autograd's double backward
(``products="autograd"``) and through finite differences on extra forward rows
(``products="fd"``, :class:`cdp.contraction.FiniteDifferences`; central differences, the default,
and forward ones), as ratios to the plain step
measured in one run, interleaved.

Cases: a 3 x 256 Mish MLP written here with plain ``torch.nn`` (act 6, obs 17, batch 256: the
EDP actor's size); the project's UNet1D and DiT as Diffusion Policy backbones (batch 64, chunks
16 x 2 and 16 x 7); diffusers' ``UNet1DModel`` (batch 64, chunk 16 x 7) when diffusers is
installed. A step = denoising loss (+ gamma * term), backward, Adam.

    python benchmarks/any_network.py [--quick] [--only mlp|il|diffusers] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import Table, ms_per_call, parse
from torch import nn

from cdp.contraction import ContractionConfig, ContractionRegularizer
from cdp.diffusion import VPSchedule, denoising_loss


class PlainMLP(nn.Module):
    """A denoiser as a user would write it: ``[a_t, sinusoidal t, state]`` through 3 x 256 Mish."""

    def __init__(self, act: int, obs: int, width: int = 256, temb: int = 16) -> None:
        super().__init__()
        self.freqs = nn.Parameter(torch.exp(torch.linspace(0, 4, temb // 2)), requires_grad=False)
        self.body = nn.Sequential(nn.Linear(act + temb + obs, width), nn.Mish(), nn.Linear(width, width), nn.Mish(),
                                  nn.Linear(width, width), nn.Mish(), nn.Linear(width, act))

    def forward(self, a: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ang = t[:, None] * self.freqs
        return self.body(torch.cat([a, ang.sin(), ang.cos(), s], -1))


MLP_VARIANTS: dict[str, ContractionConfig | None] = {
    "plain": None,
    "every t, autograd": ContractionConfig(products="autograd"),
    "every t, fd": ContractionConfig(products="fd"),
    "every t, fd forward": ContractionConfig(products="fd", fd_scheme="forward"),
    "t < 0.1 window, autograd": ContractionConfig(products="autograd", t_max=0.1),
    "t < 0.1 window, fd": ContractionConfig(products="fd", t_max=0.1),
    "t < 0.1 window, fd forward": ContractionConfig(products="fd", t_max=0.1, fd_scheme="forward"),
    "sub-batch 32, autograd": ContractionConfig(products="autograd", subbatch=32),
    "sub-batch 32, fd": ContractionConfig(products="fd", subbatch=32),
}

IL_VARIANTS: dict[str, ContractionConfig | None] = {
    "DP": None,
    # the bundled trainers' estimator: Lanczos 4 through autograd (products="native", exact_max_dim=8)
    "sub-batch 16, lanczos 4, autograd": ContractionConfig(subbatch=16, products="native", exact_max_dim=8),
    "sub-batch 16, lanczos 4, fd": ContractionConfig(subbatch=16, products="fd", exact_max_dim=8),
    "sub-batch 16, exact, autograd": ContractionConfig(subbatch=16, products="native", exact_max_dim=1024),
    "sub-batch 16, exact, fd": ContractionConfig(subbatch=16, products="fd", exact_max_dim=1024),
    "sub-batch 16, exact, fd forward": ContractionConfig(subbatch=16, products="fd", exact_max_dim=1024,
                                                         fd_scheme="forward"),
    # Lanczos with enough steps to be within 2% on >= 95% of samples at 16 x 7
    # (results_estimator_accuracy.md: 16 steps on the DiT, 32 on the UNet): the alternatives
    # to the exact search on large chunks
    "sub-batch 16, lanczos 16, fd": ContractionConfig(subbatch=16, products="fd", exact_max_dim=8, method="lanczos",
                                                      iters=16),
    "sub-batch 16, lanczos 32, fd": ContractionConfig(subbatch=16, products="fd", exact_max_dim=8, method="lanczos",
                                                      iters=32),
    # ContractionConfig's defaults: fd, the exact eigenvalue up to 256 numbers (EXACT_MAX_DIM)
    "sub-batch 16, library defaults": ContractionConfig(subbatch=16),
    "full batch, lanczos 4, autograd": ContractionConfig(products="native", exact_max_dim=8),
    "full batch, lanczos 4, fd": ContractionConfig(products="fd", exact_max_dim=8),
    "full batch, exact, fd": ContractionConfig(exact_max_dim=1024, products="fd"),
}


def time_steps(steps: dict[str, callable], rounds: int, inner: int, device: torch.device) -> dict[str, float]:
    for f in steps.values():
        for _ in range(2):
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            times[k].append(ms_per_call(f, inner, device))
    return {k: statistics.median(v) for k, v in times.items()}


def mlp_steps(batch: int, device: torch.device) -> dict[str, callable]:
    sch = VPSchedule()
    g = torch.Generator().manual_seed(0)
    s, a = torch.randn(batch, 17, generator=g).to(device), (torch.rand(batch, 6, generator=g) * 2 - 1).to(device)
    steps = {}
    for name, cfg in MLP_VARIANTS.items():
        torch.manual_seed(0)
        net = PlainMLP(6, 17).to(device)
        opt = torch.optim.Adam(net.parameters(), 3e-4)
        reg = ContractionRegularizer(sch, "eps", cfg) if cfg else None

        def step(net=net, opt=opt, reg=reg) -> None:
            loss = reg.loss(net, a, s).total if reg else denoising_loss(net, a, sch, "eps", cond=s).loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    return steps


def il_steps(backbone: dict, d: int, batch: int, device: torch.device) -> dict[str, callable]:
    from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
    from cdp.il.trainer import PolicyStep

    data = {"obs": torch.randn(batch, 2, 7, device=device), "act": torch.rand(batch, 16, d, device=device) * 2 - 1}
    steps = {}
    for name, cfg in IL_VARIANTS.items():
        torch.manual_seed(0)
        pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=["x"], obs_dim=7, action_dim=d, contraction=cfg,
                                                    **backbone)).to(device)
        step = PolicyStep(pol, copy.deepcopy(pol).requires_grad_(False), torch.optim.AdamW(pol.parameters(), 1e-4))
        steps[name] = lambda step=step: step.update(data)
    return steps


def diffusers_steps(batch: int, device: torch.device) -> dict[str, callable]:
    from diffusers import DDPMScheduler
    from diffusers_step import unet

    from cdp.diffusion.from_diffusers import DiffusersDenoiser, prediction_from_scheduler, schedule_from_scheduler

    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    sch, pred = schedule_from_scheduler(sched), prediction_from_scheduler(sched)
    x0 = (torch.rand(batch, 7, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    steps = {}
    for name, cfg in IL_VARIANTS.items():
        torch.manual_seed(0)
        model = unet((32, 64)).to(device)
        net = DiffusersDenoiser(model, 100)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        reg = ContractionRegularizer(sch, pred, cfg) if cfg else None

        def step(net=net, opt=opt, reg=reg) -> None:
            loss = reg.loss(net, x0, num_steps=100).total if reg else denoising_loss(net, x0, sch, pred,
                                                                                        num_steps=100).loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["mlp", "il", "diffusers"], default=None)
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args, header = parse(ap)
    rounds, inner = (3, 3) if args.quick else (7, 5)
    dev = args.device
    table = Table(f"{header}; median ms per training step over {rounds} rounds of {inner}, interleaved", "",
                  "| network | variant | ms/step | ratio to plain |", "|---|---|---:|---:|")
    cases: list[tuple[str, callable]] = []
    if args.only in (None, "mlp"):
        cases.append(("3 x 256 Mish MLP (plain torch.nn), act 6, batch 256", lambda: mlp_steps(256, dev)))
    if args.only in (None, "il"):
        for d in (2, 7):
            cases.append((f"UNet 32-64-128, chunk 16 x {d}, batch 64",
                          lambda d=d: il_steps(dict(backbone="unet", unet_dims=(32, 64, 128)), d, 64, dev)))
            cases.append((f"DiT 64 x 4, chunk 16 x {d}, batch 64",
                          lambda d=d: il_steps(dict(backbone="dit", dit_width=64, dit_depth=4, dit_heads=4), d, 64, dev)))
    if args.only in (None, "diffusers"):
        try:
            import diffusers  # noqa: F401
            cases.append(("diffusers UNet1DModel 32-64, chunk 16 x 7, batch 64", lambda: diffusers_steps(64, dev)))
        except ImportError:
            print("(diffusers not installed: its rows skipped)")
    for name, make in cases:
        ms = time_steps(make(), rounds, inner, dev)
        base = next(iter(ms.values()))
        for k, v in ms.items():
            table.row(f"| {name} | {k} | {v:.2f} | {v / base:.2f}x |")
    table.write(args.markdown)


if __name__ == "__main__":
    main()
