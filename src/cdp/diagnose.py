"""Does a trained policy's sampling flow contract? ``cdp diagnose RUN [RUN ...]``.

For each run (an offline-RL run of a diffusion agent, or an imitation run of a diffusion policy),
at states from its own dataset:

- **separation vs bound**: the probability-flow ODE from pairs of nearby noises (RK4), the
  measured final separation ratio against ``exp(int lambda_max(sym J_F) dtau)`` along the way;
- **lambda_max(sym J_F)/|h| over diffusion time**, at diffused dataset actions (on the data) and
  at diffused actions drawn uniformly from ``[-2, 2]^d`` (off the data's support);
- **action spread**: per-state standard deviation of sampled actions across sampler seeds;
- **the rate at the term's noise levels**: for a discrete schedule of T levels, at the levels
  inside the run's window (``t <= t_max``; for EDP and DP runs, CDP's default window, so a base
  and its CDP are read at the same levels) and three beyond it, the rate's median and the shares
  of states above the hinge's floor ``-margin`` (the rows the hinge carries gradient on) and
  above 0 (an expanding flow).

Writes ``diagnostics.json``, ``diagnostics.png`` (one colour per run) and ``diagnostics.md``
(the level table) to ``--out``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .contraction import max_sym_eig, separation_and_bound
from .diffusion import VPSchedule, sample
from .io import config_from_json, read_json
from .runlog import load_checkpoint
from .diffusion.schedule import broadcast_to
from .io import atomic_write


@dataclass
class Flow:
    """A trained denoiser with what its sampling flow needs: ``net(a_t, t, cond)``, its
    schedule and parameterisation, and ``S`` dataset states (``cond [S, ...]``) with their
    actions (``actions [S, *action_shape]``, in the network's normalised units)."""

    name: str
    net: torch.nn.Module
    schedule: VPSchedule
    prediction: str
    cond: Tensor
    actions: Tensor
    sampler: str
    sample_steps: int
    t_max: float | None = 0.1  # the term's window (CDP's default for runs without the term)
    floor: float = 0.1  # the hinge's margin: rows with rate > -floor carry its gradient


def flow_from_run(run: str | Path, states: int = 16, seed: int = 0) -> Flow:
    """Load a run folder's trained denoiser and ``states`` dataset states (seeded choice)."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    cfg = read_json(run / "config.json", "run config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{run / 'config.json'}: not a run config")
    rng = np.random.default_rng(seed)
    if "policy" in cfg:  # imitation
        from .il.policy import DiffusionPolicy, load_policy
        from .il.tasks import get_task
        from .il.trainer import ILTrainConfig, load_demos
        from .il.windows import ChunkWindows

        icfg = config_from_json(ILTrainConfig, run / "config.json", "an imitation")
        pol = load_policy(run / "policy")
        if not isinstance(pol, DiffusionPolicy):
            raise ValueError(f"{run}: {icfg.policy} is not a diffusion policy; nothing to diagnose")
        task = get_task(icfg.task)
        w = ChunkWindows(load_demos(icfg, task), task.obs_keys, pol.config.n_obs_steps, pol.config.horizon,
                         pol.action_start)
        obs, act = w.batch(torch.as_tensor(rng.integers(0, len(w), states)))
        c = pol.config
        return Flow(f"{icfg.task}/{icfg.run_name()}", pol.net, pol.schedule, c.prediction, pol.cond(obs),
                    pol.act_norm(act), c.sampler, c.sample_steps, icfg.t_max, icfg.margin or 0.0)
    from .rl.edp import EDP
    from .rl.trainer import TrainConfig, load_dataset, make_agent

    tcfg = config_from_json(TrainConfig, run / "config.json", "an offline-RL")
    data, _ = load_dataset(tcfg.dataset)
    agent = make_agent(tcfg, data.obs_dim, data.act_dim)
    if not isinstance(agent, EDP):
        raise ValueError(f"{run}: {tcfg.algo} has no diffusion actor with a sampling flow to diagnose")
    agent.load_state_dict(load_checkpoint(run / "checkpoint.pt")["agent"])
    idx = rng.integers(0, len(data), states)
    from .rl.trainer import DataTransform

    obs = DataTransform.for_run(tcfg, data).obs(data.observations[idx])  # what the actor saw in training
    window = tcfg if tcfg.algo == "cdp" else TrainConfig(algo="cdp", dataset=tcfg.dataset)
    return Flow(f"{tcfg.dataset}/{tcfg.run_name()}", agent.actor_ema, agent.cfg.schedule,
                agent.cfg.prediction, torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(data.actions[idx]),
                agent.cfg.sampler, agent.cfg.sample_steps, window.t_max, window.margin or 0.0)


def normalised_lambda(flow: Flow, a0: Tensor, ts: list[float], seed: int = 0, iters: int = 20) -> Tensor:
    """``lambda_max(sym J_F)/|h|`` at ``a_t = alpha a0 + sigma eps`` for each ``t``: ``[len(ts), S]``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for t in ts:
            tb = torch.full((a0.shape[0],), t)
            a_t = flow.schedule.q_sample(a0, tb, torch.randn(a0.shape, generator=g))
            f, h = flow.schedule.sampling_ode_coefficients(tb, flow.prediction)  # type: ignore[arg-type]
            fb, hb = broadcast_to(f / h.abs(), a_t), broadcast_to(torch.sign(h), a_t)
            lam = max_sym_eig(lambda a: fb * a + hb * flow.net(a, tb, flow.cond), a_t, "auto", iters)
            out.append(lam)
    return torch.stack(out)


def window_levels(flow: Flow) -> list[int]:
    """The discrete levels to read (``t = i / T``): those inside the window and three beyond it
    (about T/5, T/2 and 9T/10); without a window, 1, 2, T/10, T/2 and T. Empty for a continuous
    schedule."""
    if flow.schedule.kind != "discrete" or flow.schedule.log_alpha_knots is None:
        return []
    T = len(flow.schedule.log_alpha_knots) - 1
    if flow.t_max is None:
        return sorted({1, 2, max(1, T // 10), max(1, T // 2), T})
    inside = [i for i in range(1, T + 1) if i / T <= flow.t_max * (1 + 1e-6)]
    return sorted(set(inside) | {max(1, T // 5), max(1, T // 2), max(1, 9 * T // 10)})


def level_rates(flow: Flow, seed: int = 0) -> list[dict]:
    """At each of :func:`window_levels`, the rate ``lambda_max(sym J_F)/|h|`` at diffused
    dataset actions: median, share above ``-floor`` and share above 0, over the flow's states."""
    levels = window_levels(flow)
    if not levels:
        return []
    T = len(flow.schedule.log_alpha_knots) - 1  # type: ignore[arg-type]
    rates = normalised_lambda(flow, flow.actions, [i / T for i in levels], seed + 2)
    return [{"level": i, "of": T, "in_window": flow.t_max is None or i / T <= flow.t_max * (1 + 1e-6),
             "median": float(r.median()), "above_floor": float((r > -flow.floor).float().mean()),
             "above_zero": float((r > 0).float().mean())} for i, r in zip(levels, rates)]


def level_table(results: list[dict]) -> str:
    """The level rows of every run as one markdown table."""
    lines = ["| run | level (of T) | in window | median rate | share > -floor | share > 0 |",
             "|---|---:|---|---:|---:|---:|"]
    for r in results:
        for row in r.get("levels", []):
            lines.append(f"| {r['name']} | {row['level']} (of {row['of']}) | {'yes' if row['in_window'] else 'no'} | "
                         f"{row['median']:+.3f} | {row['above_floor']:.0%} | {row['above_zero']:.0%} |")
    return "\n".join(lines) + "\n"


def diagnose(flow: Flow, steps: int = 400, delta: float = 1e-3, spread_samples: int = 16, seed: int = 0,
             tol: float = 0.05) -> dict:
    """All three diagnostics for one flow (numbers as lists, for JSON). The ODE runs on a
    log-SNR grid of ``steps`` RK4 steps; ``bound_holds`` is the share of pairs whose ratio stays
    within ``1 + tol`` of the bound (the bound's integral is a trapezoid sum on that grid, so a
    few per cent of discretisation error remain at a few hundred steps)."""
    S = flow.cond.shape[0]
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(flow.actions.shape, generator=g)
    d = torch.randn(flow.actions.shape, generator=g)
    d = delta * d / d.flatten(1).norm(dim=1).view(-1, *[1] * (d.ndim - 1))
    ratio, bound = separation_and_bound(lambda a, t: flow.net(a, t, flow.cond), x_T, d, flow.schedule,
                                        flow.prediction, steps=steps, spacing="logsnr")  # type: ignore[arg-type]
    ts = [float(t) for t in np.linspace(0.02, 0.98, 9)]
    on = normalised_lambda(flow, flow.actions, ts, seed)
    off = normalised_lambda(flow, torch.empty_like(flow.actions).uniform_(-2, 2, generator=g), ts, seed + 1)
    rep = flow.cond.repeat_interleave(spread_samples, 0)
    with torch.inference_mode():
        a = sample(lambda x, t: flow.net(x, t, rep), torch.randn(S * spread_samples, *flow.actions.shape[1:], generator=g),
                   flow.schedule, flow.sampler, flow.sample_steps, flow.prediction, clip_x0=1.0)  # type: ignore[arg-type]
    spread = a.clamp(-1, 1).reshape(S, spread_samples, -1).std(1).mean(1)
    return {"name": flow.name, "ratio": ratio.tolist(), "bound": bound.tolist(), "t": ts,
            "lambda_on_data": on.mean(1).tolist(), "lambda_off_data": off.mean(1).tolist(),
            "action_spread": float(spread.mean()), "bound_holds": float((ratio <= bound * (1 + tol)).float().mean()),
            "floor": flow.floor, "levels": level_rates(flow, seed)}


def plot(results: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for i, r in enumerate(results):
        c = f"C{i}"
        ax[0].scatter(r["bound"], r["ratio"], s=14, color=c, label=r["name"])
        ax[1].plot(r["t"], r["lambda_on_data"], "-o", ms=3, color=c, label=f"{r['name']} (data)")
        ax[1].plot(r["t"], r["lambda_off_data"], "--", color=c, label=f"{r['name']} (off support)")
        ax[2].bar(i, r["action_spread"], color=c)
    lo = min(min(r["ratio"] + r["bound"]) for r in results)
    hi = max(max(r["ratio"] + r["bound"]) for r in results)
    ax[0].plot([lo, hi], [lo, hi], "k:", lw=1)
    ax[0].set(xscale="log", yscale="log", xlabel="bound exp(∫ λ_max dτ)", ylabel="measured separation ratio",
              title="separation vs bound (below the diagonal: bound holds)")
    from matplotlib.ticker import NullFormatter

    for axis in (ax[0].xaxis, ax[0].yaxis):
        axis.set_minor_formatter(NullFormatter())
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="diffusion time t", ylabel="λ_max(sym J_F) / |h|", title="contraction rate over time")
    ax[2].set(xticks=range(len(results)), xticklabels=[r["name"] for r in results], ylabel="std over sampler seeds",
              title="action spread per state")
    ax[2].tick_params(axis="x", labelrotation=20, labelsize=7)
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def run_diagnostics(runs: list[str], out: str | Path, states: int = 16, steps: int = 400, seed: int = 0,
                    progress: bool = True) -> Path:
    from tqdm.auto import tqdm

    flows = [flow_from_run(r, states, seed) for r in runs]  # every folder checked before the long part
    results = [diagnose(f, steps=steps, seed=seed) for f in tqdm(flows, desc="diagnose", unit="run", disable=not progress)]
    out = Path(out)
    atomic_write(out / "diagnostics.json", json.dumps(results, indent=1).encode())
    atomic_write(out / "diagnostics.png", plot(results))
    atomic_write(out / "diagnostics.md", level_table(results).encode())
    return out / "diagnostics.png"
