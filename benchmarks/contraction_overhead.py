"""Training-step cost of the contraction term, as a ratio to the plain step measured in one run.

A step = denoising loss (+ gamma * contraction term) on the DQL/EDP MLP denoiser (3 x 256,
Mish, state-conditioned), batch 256, backward, Adam. Plain and regularised steps are timed
interleaved, round-robin, so both see the same machine state; the figure is the median.

    python benchmarks/contraction_overhead.py            # full table (a few minutes on 2 cores)
    python benchmarks/contraction_overhead.py --quick    # fewer repeats
    python benchmarks/contraction_overhead.py --markdown results.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from _common import Table, parse

from cdp.contraction import ContractionConfig, ContractionRegularizer
from cdp.diffusion import VPSchedule, denoising_loss
from cdp.nets import MLPDenoiser


@dataclass
class Case:
    name: str
    action_shape: tuple[int, ...]
    state_dim: int


CASES = [Case("d=3 (hopper)", (3,), 11), Case("d=6 (walker2d)", (6,), 17), Case("16x7 chunk", (16, 7), 23)]

# "_path": "fused" = reg.loss(net, ...) (one pass when possible); "split" = denoising_loss then
# reg(net, ...); "generic" = split with the network behind a closure (autograd, any network).
VARIANTS: list[tuple[str, dict]] = [
    ("default (auto), fused", {}),
    ("default (auto), split", {"_path": "split"}),
    ("default (auto), generic autograd", {"_path": "generic"}),
    ("exact", {"method": "exact", "exact_max_dim": 112}),
    ("lanczos K=4", {"method": "lanczos"}),
    ("power K=4", {"method": "power"}),
    ("auto, sub-batch 64", {"subbatch": 64}),
    ("auto, sub-batch 32", {"subbatch": 32}),
    ("auto, t < 0.1 window", {"t_max": 0.1}),
    ("frobenius (auto)", {"form": "frobenius"}),
]


def make_step(case: Case, reg: ContractionRegularizer | None, path: str, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    net = MLPDenoiser(case.action_shape, case.state_dim)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    sch = VPSchedule()
    obs = torch.randn(batch, case.state_dim)
    act = torch.rand(batch, *case.action_shape) * 2 - 1
    # a plain closure hides forward_jvp, so the term goes through autograd (any user's network)
    fn = (lambda a, t, s: net(a, t, s)) if path == "generic" else net

    def step() -> None:
        if reg is not None and path == "fused":
            loss = reg.loss(fn, act, obs).total
        else:
            out = denoising_loss(fn, act, sch, "eps", cond=obs)
            loss = out.loss.mean()
            if reg is not None:
                loss = loss + reg(fn, out.a_t, out.t, cond=obs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_round_robin(steps: dict[str, callable], repeats: int, inner: int) -> dict[str, float]:
    """Median ms per step of each callable, timed in interleaved rounds."""
    for f in steps.values():  # warm-up
        for _ in range(3):
            f()
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append(1000 * (time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--markdown", type=str, default=None, help="also write the table to this file")
    args, header = parse(ap)
    repeats, inner = (5, 5) if args.quick else (15, 10)
    sch = VPSchedule()
    table = Table(f"machine: {header}; batch {args.batch}; MLP 3 x 256; median ms/step over {repeats} rounds of {inner}",
                  "", "| action | variant | plain ms | with term ms | ratio |", "|---|---|---:|---:|---:|")
    for case in CASES:
        steps = {"plain": make_step(case, None, "split", args.batch)}
        for name, kw in VARIANTS:
            kw = dict(kw)
            path = kw.pop("_path", "fused")
            steps[name] = make_step(case, ContractionRegularizer(sch, "eps", ContractionConfig(**kw)), path, args.batch)
        ms = time_round_robin(steps, repeats, inner)
        for name, _ in VARIANTS:
            table.row(f"| {case.name} | {name} | {ms['plain']:.2f} | {ms[name]:.2f} | {ms[name] / ms['plain']:.2f}x |")
    table.write(args.markdown)


if __name__ == "__main__":
    main()
