"""``cdp reproduce [--quick]``: the paper's two tables and its 10%-data ablation at this machine's scale.

Runs the bundled study grids (``cdp/studies/*.toml``, linked as ``experiments/``) as one queue of
runs, in study order — offline RL (EDP, CDP; then BC, DQL, IDQL) on the generated hopper / walker2d
medium-replay datasets, and imitation (BC-GMM, DBC-DiT, DP / CDP with UNet and DiT backbones) on
MultiReach-hard and robosuite Lift, each at 100% and 10% of the data — making any dataset that is
missing first (:func:`cdp.sweep.make_missing_data`), then writes one markdown file with every
study's tables, the CDP-vs-base differences beside the paper's, the steps, seeds and wall time.
Every study is a resumable sweep: an interrupted ``cdp reproduce`` picks up where it stopped,
finished runs are never repeated.

``--quick`` shrinks every study (:class:`Quick`: a fraction of the steps, one seed, fewer
evaluation rollouts) into separate run and result folders, so it never mixes with the full runs;
its numbers are a pipeline check, not a result, and the output says so.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

from .io import atomic_write
from .report import write_report
from .sweep import Job, SweepConfig, is_finished, load_sweep, run_sweep

#: Study name -> title. The datasets each reads are made when missing (:func:`cdp.sweep.make_missing_data`).
STUDIES: dict[str, str] = {
    "offline_rl_published": ("Offline RL: EDP vs CDP with the term at its published weight, 10% of transitions (the "
                             "paper's first table and its data-scarce claim)"),
    "offline_rl_forms": "Offline RL, 10% of transitions: the paper's hinge beside the official runs' Frobenius form",
    "offline_rl_gamma": "Offline RL, 10% of transitions: the term's weight, gamma 0.01 and 1 beside the published 0.1",
    "offline_rl_gamma_seeds": "Offline RL, 10% of transitions: CDP at gamma 1 (ten times the published weight), 5 seeds",
    "offline_rl_published_seeds": "Offline RL, 10% of transitions: EDP vs CDP at the published weight, 5 seeds",
    "offline_rl_kitchen": ("Offline RL on kitchen-complete (scripted demonstrations): BC, EDP and CDP at the published"
                           " weight, 100% and 10% of transitions"),
    "offline_rl_kitchen_forms": ("Offline RL on kitchen-complete: CDP with the official runs' Frobenius form beside the "
                                 "paper's hinge, which almost never acts there"),
    "offline_rl_walker": ("Offline RL on walker2d medium-replay from an expert-scale behaviour agent: BC, EDP and CDP "
                          "at the published weight, 100% and 10% of transitions"),
    "offline_rl_walker_baselines": "Offline RL on the same walker2d data: DQL and IDQL, 100% and 10% of transitions",
    "offline_rl_walker_clip": ("Offline RL on the same walker2d data, 10% of transitions: EDP and CDP with EDP's own "
                               "gradient-norm clip (4)"),
    "offline_rl_official": "Offline RL, 10% of transitions, at the official runs' settings and 200k steps",
    "offline_rl": "Offline RL, cdp 0.1's form: EDP vs CDP at an effective weight of ~0.007, whole trajectories",
    "offline_rl_baselines": "Offline RL baselines: BC, DQL, IDQL",
    "imitation_reach_hard": "Imitation on MultiReach-hard (the paper's second table, procedural task)",
    "imitation_lift": "Imitation on robosuite Lift (the paper's second table)",
    "imitation_lift_seeded": ("Imitation on robosuite Lift in the published form: data and evaluations from the fixed "
                              "model seed, the CDP arms with the term's exact eigenvalue"),
    "imitation_lift_windows": ("Imitation on Lift, the data-scarce cell cut as the official runs cut it: 10% of all "
                               "the demonstrations' training windows"),
    "imitation_lift_one_action": ("Imitation on Lift, 10% of the training windows, in the official runs' policy form "
                                  "(one action per step, MLP, x0, T = 50): DP vs the paper's hinge and the official "
                                  "Frobenius form"),
    "imitation_lift_image": "Imitation from cameras: DP-UNet vs CDP-UNet on image Lift, 10% of the demonstrations",
    "imitation_lift_image_seeded": ("Imitation from cameras: the image Lift study again on data and evaluations from "
                                    "robosuite's fixed model seed"),
    "imitation_lift_image_exact": ("Imitation from cameras: image Lift's CDP-UNet arm with the term's exact eigenvalue, "
                                   "beside the seeded study's arms"),
    "imitation_transport": "Imitation on robosuite TwoArmTransport (scripted demonstrations): DP-UNet vs CDP-UNet",
    "imitation_transport_budget": ("Imitation on Transport: how many steps DP-UNet needs (the base alone, 40k steps, "
                                   "all the demonstrations)"),
    "imitation_transport_one_action": ("Imitation on Transport in the official runs' policy form (one action per step, "
                                       "MLP, x0, T = 50): DP-MLP vs CDP-MLP, 100% and 10% of the training windows"),
    "imitation_gamma": "Contraction weight and margin: success and goal orders kept on MultiReach, 10% data",
    "imitation_margin": "The hinge's margin at gamma 0.1 on MultiReach, 10% data (shares imitation_gamma's runs)",
    "imitation_reach_hard_margin": "Follow-up: CDP-UNet / CDP-DiT on MultiReach-hard with margin 1",
}


@dataclass(frozen=True)
class Quick:
    """How ``--quick`` shrinks a study."""

    steps_divisor: int = 25
    min_steps: int = 200
    seeds: int = 1
    evals: int = 2
    max_eval_episodes: int = 10


def study_path(name: str) -> Path:
    """The bundled grid ``cdp/studies/<name>.toml``."""
    p = Path(str(files("cdp") / "studies" / f"{name}.toml"))
    if not p.is_file():
        known = sorted(q.stem for q in p.parent.glob("*.toml"))
        raise FileNotFoundError(f"no bundled study {name!r}; known: {known}")
    return p


def shrink(sweep: SweepConfig, quick: Quick) -> SweepConfig:
    """The same grid, smaller: steps / divisor (at least ``min_steps``), the first ``seeds``
    seeds, ``evals`` evaluations of at most ``max_eval_episodes`` rollouts; run folders and
    records under ``<out>-quick`` / ``<results>-quick``."""
    fixed = dict(sweep.fixed)
    steps = max(quick.min_steps, int(fixed.get("steps", 20_000)) // quick.steps_divisor)
    fixed.update(steps=steps, eval_every=max(1, steps // quick.evals),
                 eval_episodes=min(int(fixed.get("eval_episodes", 50)), quick.max_eval_episodes))
    if "checkpoint_every" in fixed:
        fixed["checkpoint_every"] = max(1, steps // 4)
    grid, arms = dict(sweep.grid), [dict(arm) for arm in sweep.arms]
    for table in (grid, *arms):
        if "seed" in table:
            table["seed"] = table["seed"][: quick.seeds]
    if "seed" not in grid and not any("seed" in arm for arm in arms):
        fixed["seed"] = fixed.get("seed", 0)
    return replace(sweep, fixed=fixed, grid=grid, arms=arms, out=sweep.out.rstrip("/") + "-quick",
                   results=(sweep.results.rstrip("/") + "-quick") if sweep.results else None)


def _scale_line(sweep: SweepConfig) -> str:
    f, g = sweep.fixed, sweep.grid
    seeds = g.get("seed", [f.get("seed", 0)])
    arms = [", ".join(f"{k} {v}" for k, v in arm.items()) for arm in sweep.arms if arm]
    return (f"{f.get('steps')} steps, seeds {seeds}, evaluation every {f.get('eval_every')} steps on "
            f"{f.get('eval_episodes')} episodes; grid {', '.join(f'{k} {v}' for k, v in g.items() if k != 'seed')}"
            + (f"; arms: {'; '.join(arms)}" if arms else ""))


def reproduce(quick: bool = False, only: list[str] | None = None, workers: int | None = None,
              out: str | Path | None = None, progress: bool = True, quick_scale: Quick = Quick(),
              report_only: bool = False, time_limit_s: float | None = None, fill: bool = False,
              device: str | None = None) -> Path:
    """Run the studies (all, or ``only`` these names) and write the combined markdown; returns its path.
    ``time_limit_s``, ``fill``: as :func:`cdp.sweep.run_sweep`'s (runs that fit, then checkpoint and stop).
    Every study's runs go into one queue (``cdp.sweep.queue``), in study order, so no core idles
    while a later study has runs to do; the page is rewritten as each study completes.
    ``report_only``: train nothing and make no data, write the page from the records as they
    stand (how many of each grid's runs are recorded is on the page). ``device``: train every run
    there, whatever the study files say (:meth:`cdp.sweep.SweepConfig.on_device`)."""
    names = list(STUDIES) if not only else only
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise ValueError(f"unknown study {unknown}; choose from {list(STUDIES)}")
    out = Path(out) if out is not None else Path("results") / ("reproduce-quick.md" if quick else "reproduce.md")
    import torch

    head = [f"# cdp reproduce{' --quick' if quick else ''}", "",
            f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}. Datasets generated here (not D4RL's or robomimic's: docs/offline_rl.md, "
            "docs/imitation.md).", ""]
    if quick:
        head += [f"**Quick mode** ({quick_scale}): a pipeline check at a tiny budget, not a result.", ""]
    sweeps: dict[str, SweepConfig] = {}
    for name in names:
        sweep = load_sweep(study_path(name))
        sweep = shrink(sweep, quick_scale) if quick else sweep
        if workers is not None:
            sweep.workers = workers
        if device is not None:
            sweep.on_device(device)
        sweeps[name] = sweep
        print(f"== {name}: {STUDIES[name]}\n   {_scale_line(sweep)}", flush=True)
    jobs = {name: sweep.jobs() for name, sweep in sweeps.items()}
    trained: dict[str, int] = dict.fromkeys(names, 0)
    t_all = time.perf_counter()

    def study_line(name: str) -> str:
        sweep = sweeps[name]
        if report_only:
            done = sum(j.record_path().is_file() for j in jobs[name])  # type: ignore[union-attr]
            what = f"report only: {done} of {len(jobs[name])} runs recorded"
        else:
            done = sum(is_finished(j) for j in jobs[name])
            what = (f"{sweep.workers or os.cpu_count()} worker(s); {done} of {len(jobs[name])} runs finished, "
                    f"{trained[name]} runs trained in this call")
        return (f"- **{STUDIES[name]}**: `cdp sweep experiments/{name}.toml{'' if not quick else ' (shrunk)'}` — "
                f"{_scale_line(sweep)}; {what}; records in `{sweep.results}`.")

    def write_page(closing: list[str]) -> None:
        # studies sharing a results folder (RL: EDP/CDP and the baselines; imitation: both tasks)
        # share one report, shown once
        page = head + ["## Studies", ""] + [study_line(n) for n in names] + [""]
        for res in dict.fromkeys(str(s.results) for s in sweeps.values()):
            if not any(Path(res).rglob("*.json")):  # (report-only: maybe nothing recorded yet)
                continue
            report = write_report(res)
            rel = os.path.relpath(report.parent, out.parent)
            body = report.read_text().split("\n", 3)[-1]  # without the report's own title lines
            page += [f"## Results in `{res}`", "", body.replace("](", f"]({rel}/").replace("## ", "### "), ""]
        atomic_write(out, "\n".join(page + closing).encode())

    if not report_only:
        complete = {n for n in names if all(is_finished(j) for j in jobs[n])}

        def on_done(job: Job) -> None:
            for name in names:
                if any(j.out == job.out for j in jobs[name]):
                    trained[name] += 1
            newly = {n for n in names if n not in complete and all(is_finished(j) for j in jobs[n])}
            if newly:  # each finished study is on disk at once
                complete.update(newly)
                write_page([])

        run_sweep(list(sweeps.values()), progress=progress, on_done=on_done, time_limit_s=time_limit_s,
                  fill=fill)
    write_page([f"Wall time of this call: {(time.perf_counter() - t_all) / 60:.1f} min (finished runs are skipped, "
                "so a call that resumes a study costs only what it trained; each results section says how much "
                "compute its records took in all).", ""])
    print(f"\nwrote {out}")
    return out
