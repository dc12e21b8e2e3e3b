"""``cdp demo``: a diffusion policy with and without the contraction term, on scarce data.

Part 1 (the main one): the multi-goal reaching task (no simulator), 200 scripted demonstrations
made on the spot, of which 10% (20) are kept; Diffusion Policy with a DiT backbone (DP-DiT) and
the same with the contraction term (CDP-DiT, gamma 0.1, margin 0.1, every t, 16-sample
sub-batch), trained side by side in two processes (a :mod:`cdp.sweep` grid, so a re-run resumes)
and evaluated on 50 rollouts; prints success rate, goal orders reproduced, action spread and the
CDP-vs-base table, and writes :func:`cdp.report.write_report`'s plots.

Part 2: three small diffusion models on 2-D two-mode action data (70/30): plain, CDP at the
defaults, and CDP with a huge weight and no margin (the failure mode the margin exists to
prevent): what each samples and how contracting its sampling flow is, with a figure. It trains in
a third process once part 1 leaves a core free (fewer of its runs left than its two workers: with
one seed, when DP-DiT finishes, its step being a third of CDP-DiT's), and its output is printed
after part 1's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from .contraction import ContractionConfig, contraction_loss
from .io import atomic_write
from .report import cdp_vs_base, load_runs, table, write_report
from .sweep import Job, SweepConfig, init_worker, is_finished, queue, run_sweep
from .toy import two_mode_2d
from .toy_train import ToyResult, ToyTrainConfig, train_toy

RUNS: list[tuple[str, ContractionConfig | None]] = [
    ("diffusion (gamma=0)", None),
    ("CDP (gamma=0.1, margin=0.1)", ContractionConfig()),
    ("CDP over-regularised (gamma=100, no margin)", ContractionConfig(gamma=100.0, margin=None)),
]


def lambda_profile(res: ToyResult, data: torch.Tensor, ts: list[float]) -> list[float]:
    """Mean normalised ``lambda_max(sym J_F)/|h|`` over diffused data points, at each t."""
    cfg, out = res.config, []
    g = torch.Generator().manual_seed(123)
    for t in ts:
        tt = torch.full((data.shape[0],), t)
        a_t = cfg.schedule.q_sample(data, tt, torch.randn(data.shape, generator=g))
        with torch.no_grad():
            lam = contraction_loss(res.model, a_t, tt, cfg.schedule, cfg.prediction, margin=None)  # type: ignore[arg-type]
        out.append(float(lam.mean()))
    return out


def plot(path: Path, data: torch.Tensor, results: list[tuple[str, ToyResult]], ts: list[float],
         profiles: list[list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n + 2, figsize=(4 * (n + 2), 4))
    axes[0].scatter(data[:, 0], data[:, 1], s=4, alpha=0.5, color="k")
    axes[0].set_title(f"data ({data.shape[0]} actions)")
    for ax, (name, res) in zip(axes[1 : n + 1], results):
        xs = res.samples
        inside = torch.isfinite(xs).all(1) & (xs.abs() <= 2).all(1)
        ax.scatter(xs[inside, 0], xs[inside, 1], s=2, alpha=0.3)
        if (~inside).float().mean() > 0.01:
            ax.text(0, 1.5, f"{int((~inside).sum())}/{len(inside)} samples outside the plot",
                    ha="center", va="center", fontsize=9)
        ax.set_title(f"{name}\nmodes {res.mode_weights[0]:.2f}/{res.mode_weights[1]:.2f}, "
                     f"on support {res.on_support:.2f}", fontsize=9)
    for ax in axes[: n + 1]:
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
        ax.set_aspect("equal")
    ax = axes[-1]
    for (name, _), prof in zip(results, profiles):
        ax.plot(ts, prof, marker="o", ms=3, label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(-0.1, color="gray", lw=0.5, ls="--", label="hinge -margin")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("mean lambda_max(sym J_F)/|h| on data")
    ax.set_title("contraction of the sampling flow (<0: contracting)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png", dir=path.parent, delete=False) as fh:
        tmp = Path(fh.name)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


#: Part 1's runs: CPU-sized as the reach-hard study (experiments/imitation_reach_hard.toml), with
#: its estimator (Lanczos 4 through autograd: products="native", exact_max_dim=8).
POLICY_RUN = dict(task="reach", fraction=0.1, batch_size=64, lr=3e-4, dit_width=64, dit_depth=4,
                  contraction_subbatch=16, products="native", exact_max_dim=8)
FULL_STUDY = "cdp sweep experiments/imitation_reach_hard.toml  (then: cdp report results/il)"


def policy_sweep(out: Path, steps: int, eval_episodes: int, seeds: int) -> SweepConfig:
    """DP-DiT and CDP-DiT on 10% of the reach demonstrations, ``seeds`` seeds, two workers."""
    fixed = {**POLICY_RUN, "dataset": str(out / "data" / "reach_ph.hdf5"), "steps": steps,
             "eval_every": max(1, steps // 3), "eval_episodes": eval_episodes, "checkpoint_every": max(1, steps // 6),
             "log_every": max(1, min(100, steps // 10))}
    return SweepConfig(kind="il", out=str(out / "runs"), results=str(out / "results"), workers=2, threads=1,
                       grid={"seed": list(range(seeds)), "policy": ["dp-dit", "cdp-dit"]}, fixed=fixed)


def run_policy_demo(out_dir: str | Path = "runs/demo", steps: int = 3000, eval_episodes: int = 50, seeds: int = 1,
                    progress: bool = True, on_done: Callable[[Job], None] | None = None) -> str:
    """Part 1: make the data if missing, train/evaluate (or resume) the grid, print and return
    the tables (markdown). ``on_done(job)`` is called as each run finishes."""
    from .il.tasks import write_demos

    out = Path(out_dir)
    data = out / "data" / "reach_ph.hdf5"
    if not data.is_file():
        write_demos("reach", "ph", data)
    sweep = policy_sweep(out, steps, eval_episodes, seeds)
    print(f"part 1: DP-DiT vs CDP-DiT on reach, 20 of 200 demonstrations, {steps} steps, {seeds} seed(s), "
          f"{eval_episodes} evaluation rollouts; two processes", flush=True)
    run_sweep(sweep, progress=progress, on_done=on_done)
    runs = load_runs(sweep.results)  # type: ignore[arg-type]
    write_report(sweep.results, out / "report")  # type: ignore[arg-type]
    md = "\n\n".join([
        "success rate (%), last evaluation:\n" + table(runs, "final"),
        "success rate (%), best evaluation:\n" + table(runs, "best"),
        "goal orders reproduced by successful rollouts (of 6), last evaluation:\n" + table(runs, "modes_final", bold=False),
        "action spread (std of sampled actions per state over sampler seeds, normalised units):\n"
        + table(runs, "action_spread_final", digits=3, bold=False),
        "CDP minus its base: success rate (%) averaged over each run's last three evaluations; "
        "time ratio: CDP's training time per step over the base's (the paper's on a GPU beside it):\n"
        + cdp_vs_base(runs)])
    print("\n" + md)
    print(f"\nplots and report: {out / 'report'}")
    return md


def run_demo(out_dir: str | Path = "runs/demo", steps: int = 3000, eval_episodes: int = 50, seeds: int = 1,
             toy_steps: int = 3000, n_data: int = 200, seed: int = 0, progress: bool = True) -> dict:
    """Both parts; returns part 2's summary plus part 1's tables and the wall time. Part 2 starts
    once part 1 leaves a core free (see the module docstring)."""
    t0 = time.perf_counter()
    sweep = policy_sweep(Path(out_dir), steps, eval_episodes, seeds)
    left = [j.out for j in queue([sweep]) if not is_finished(j)]  # part-1 runs still to train
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=init_worker, initargs=(1,)) as procs:
        toy: list[Future] = []

        def start_toy() -> None:
            if not toy:
                toy.append(procs.submit(_toy_quietly, Path(out_dir) / "toy", toy_steps, n_data, seed))

        def start_toy_if_a_core_is_free(done: Job | None = None) -> None:
            if done is not None and done.out in left:
                left.remove(done.out)
            if len(left) < sweep.workers:  # fewer part-1 runs than its workers
                start_toy()

        start_toy_if_a_core_is_free()  # a resumed demo may have one free already
        tables = run_policy_demo(out_dir, steps, eval_episodes, seeds, progress, on_done=start_toy_if_a_core_is_free)
        start_toy()  # part 1 over: if no run finished in this call, part 2 has not started yet
        print("\npart 2: the contraction term on two-mode 2-D action data (trained alongside part 1)", flush=True)
        summary, printed = toy[0].result()
    print(printed, end="", flush=True)
    wall = time.perf_counter() - t0
    summary.update(policy_tables=tables, demo_wall_seconds=wall)
    print(f"\ndemo done in {wall / 60:.1f} min. The full imitation study (6 policies, 100% and 10% data, 3 seeds): "
          f"\n  {FULL_STUDY}\nand everything at this machine's scale: cdp reproduce")
    return summary


def _toy_quietly(out_dir: Path, steps: int, n_data: int, seed: int) -> tuple[dict, str]:
    """:func:`run_toy` without progress bars, its printed lines returned (the caller prints them
    after part 1's, so the two parts' output does not interleave)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary = run_toy(out_dir, steps, n_data, seed, progress=False)
    return summary, buf.getvalue()


def run_toy(out_dir: str | Path = "runs/demo/toy", steps: int = 3000, n_data: int = 200, seed: int = 0,
            progress: bool = True) -> dict:
    """Part 2: train the three models, print a table, write ``demo.png``, ``config.json``, ``summary.json``."""
    out = Path(out_dir)
    mix = two_mode_2d(weight=0.7)
    base = ToyTrainConfig(steps=steps, n_data=n_data, seed=seed)
    results: list[tuple[str, ToyResult]] = []
    t0 = time.perf_counter()
    for name, cc in RUNS:
        print(f"training {name} ...", flush=True)
        results.append((name, train_toy(mix, replace(base, contraction=cc), progress=progress)))
    data, _ = mix.sample(n_data, generator=torch.Generator().manual_seed(seed))
    ts = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    profiles = [lambda_profile(r, data, ts) for _, r in results]
    data_w0 = float((mix.assign(data) == 0).float().mean())

    header = f"{'run':46s} {'mode weights':>14s} {'on support':>10s} {'spread':>7s} {'lambda@data':>11s} {'ms/step':>8s}"
    rows = [header, "-" * len(header),
            f"{'data (' + str(n_data) + ' actions)':46s} {data_w0:6.2f}/{1 - data_w0:.2f}   {1.0:10.2f} {float(mix.stds[0]):7.3f}"]
    for name, r in results:
        spread = f"{r.within_mode_std:7.3f}" if r.within_mode_std < 10 else f"{'>10':>7s}"
        rows.append(f"{name:46s} {r.mode_weights[0]:6.2f}/{r.mode_weights[1]:.2f}   {r.on_support:10.2f} "
                    f"{spread} {r.lambda_data:11.3f} {1000 * r.seconds_per_step:8.2f}")
    print("\n" + "\n".join(rows))
    print("\nmode weights: share of samples nearest each mode; on support: share within 3 std of a mode;"
          "\nspread: samples' std around their mode; lambda@data: mean lambda_max(sym J_F)/|h| at t < 0.1 on data"
          " (negative = the sampling flow contracts).")

    summary = {
        "data_mode_weights": [data_w0, 1 - data_w0],
        "runs": {name: {"mode_weights": r.mode_weights, "on_support": r.on_support,
                        "within_mode_std": r.within_mode_std, "lambda_data": r.lambda_data,
                        "ms_per_step": 1000 * r.seconds_per_step, "lambda_profile": dict(zip(map(str, ts), p))}
                 for (name, r), p in zip(results, profiles)},
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write(out / "config.json", json.dumps({name: r.config.to_dict() for name, r in results}, indent=2).encode())
    atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
    plot(out / "demo.png", data, results, ts, profiles)
    print(f"\nwrote {out / 'demo.png'}, {out / 'summary.json'}, {out / 'config.json'} "
          f"({summary['wall_seconds']:.0f} s)")
    return summary
