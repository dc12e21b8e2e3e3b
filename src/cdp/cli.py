"""Command line: ``cdp demo``, ``cdp rl ...``, ``cdp il ...``, ``cdp sweep``, ``cdp report``, ``cdp diagnose``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .runtime import resolve_device, tune_allocator, usable_cores


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help names its default, unless the text already does or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action) or ""


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _temperature(s: str) -> float | str:
    """``argmax`` or a finite number > 0."""
    if s == "argmax":
        return s
    try:
        v = float(s)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be 'argmax' or a number > 0, got {s}")
    return v


def _duration(s: str) -> float:
    """``90s``, ``45m`` or ``2.5h`` -> seconds."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh])\s*", s)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a positive duration such as 90s, 45m or 2.5h is needed, got {s!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


class _Parser(argparse.ArgumentParser):
    """Every (sub-)command's help with :class:`_Help`; sub-parsers take their parent's class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _seed(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


def _margin(s: str) -> float | None:
    return None if s.lower() == "none" else float(s)


def _run_options(p: argparse.ArgumentParser, units: str, cdp_names: str, steps: int, episodes: int, out: str) -> None:
    """The options every training command shares: data fraction, the term's gamma, margin and
    form, budget, evaluation, seed and where the run and its record go."""
    from .options import FORMS

    p.add_argument("--fraction", type=float, default=1.0, help=f"share of {units} kept (seeded)")
    p.add_argument("--gamma", type=float, default=0.1, help=f"contraction weight ({cdp_names})")
    p.add_argument("--margin", type=_margin, default=0.1, help=f"hinge floor beta ({cdp_names}); 'none' for no hinge")
    p.add_argument("--form", default="eig", choices=FORMS,
                   help=f"the term's form ({cdp_names}): the paper's eigenvalue hinge, or the official runs' "
                        "mean((sym J + margin I)^2) (official_frobenius; see cdp.contraction.loss)")
    p.add_argument("--steps", type=_positive_int, default=steps, help="training steps")
    p.add_argument("--eval-every", type=_positive_int, default=5_000, help="evaluate every this many steps")
    p.add_argument("--eval-episodes", type=_positive_int, default=episodes, help="episodes per evaluation")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the data cut, initialisation and sampling")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps, or auto (a GPU when there is one)")
    p.add_argument("--eager", action="store_true",
                   help="on a CUDA device, run every training step eagerly instead of replaying it as a CUDA graph "
                        "(the CPU always runs eagerly)")
    p.add_argument("--out", default=None, help=f"run folder (default {out})")
    p.add_argument("--results", default=None, help="also write a small per-run record under this folder")


def build_parser() -> argparse.ArgumentParser:
    from .il.tasks import task_names
    from .options import ALGOS, CAMERA_RENDERS, DATA_CUTS, EXACT_MAX_DIM, IL_DATA_CUTS, POLICIES, PRESETS, WINDOWS

    p = _Parser(prog="cdp", description="Contractive Diffusion Policies")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="a diffusion policy with and without contraction on 10%% of the demonstrations "
                                    "(under 10 minutes on 2 cores), then the term on a 2-D toy")
    d.add_argument("--out", default="runs/demo", help="output folder (a re-run resumes)")
    d.add_argument("--steps", type=_positive_int, default=3000, help="policy training steps")
    d.add_argument("--eval-episodes", type=_positive_int, default=50, help="evaluation rollouts")
    d.add_argument("--seeds", type=_positive_int, default=1, help="seeds per policy")
    d.add_argument("--toy-steps", type=_positive_int, default=3000, help="toy training steps per model")
    d.add_argument("--n-data", type=_positive_int, default=200, help="toy dataset size")
    d.add_argument("--seed", type=_seed, default=0, help="toy seed")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    rl = sub.add_parser("rl", help="offline RL: make datasets (behaviour agents, D4RL-style data), train BC / DQL / EDP / "
                                    "IDQL / CDP, evaluate")
    rls = rl.add_subparsers(dest="rl_command", required=True)
    tb = rls.add_parser("train-behaviour", help="train (or resume) an SB3 SAC behaviour agent with snapshots")
    tb.add_argument("task", help="Gymnasium task, e.g. Hopper-v5")
    tb.add_argument("--steps", type=_positive_int, default=300_000, help="environment steps")
    tb.add_argument("--snapshot-every", type=_positive_int, default=20_000, help="save and score the actor every this many steps")
    tb.add_argument("--seed", type=_seed, default=0, help="SAC seed")
    tb.add_argument("--out", default=None, help="agent folder (default data/agents/<task>-sac-s<seed>)")
    md = rls.add_parser("make-data", help="roll a D4RL-style dataset from the agent's snapshots (or the scripted "
                                          "kitchen demonstrator) into Minari")
    md.add_argument("task", help="Gymnasium task, e.g. Hopper-v5, or kitchen")
    md.add_argument("quality", help="D4RL-style quality: random, medium, medium-replay, expert; "
                                    "kitchen: complete, partial, mixed")
    md.add_argument("--episodes", type=_positive_int, default=None,
                    help="kitchen: episodes (default 19 complete demonstrations, 200 partial / mixed)")
    md.add_argument("--agent", default=None,
                    help="agent folder (default data/agents/<task>-sac-s0); another agent's datasets carry its name, "
                         "e.g. cdp/walker2d/medium-replay-sac-s1-v0")
    md.add_argument("--steps", type=_positive_int, default=200_000, help="transitions (medium/expert/random)")
    md.add_argument("--seed", type=_seed, default=0, help="rollout seed")
    md.add_argument("--overwrite", action="store_true", help="replace a dataset of that id in the local store")
    tr = rls.add_parser("train", help="train BC / EDP / CDP on an offline dataset (resumable)")
    tr.add_argument("algo", choices=ALGOS, help="the algorithm (cdp = edp + the contraction term)")
    tr.add_argument("--dataset", required=True, help="Minari dataset id (local store) or D4RL .hdf5 path")
    tr.add_argument("--env", default=None, help="evaluation task (default: the Minari dataset's)")
    tr.add_argument("--critic", default="td3", choices=["td3", "iql"], help="edp/cdp critic style")
    tr.add_argument("--eta", type=float, default=None,
                    help="dql/edp/cdp: the weight of the actor's Q term (default: the task's published value, "
                         "0.005 on kitchen, 1 on the MuJoCo tasks: cdp.rl.tasks)")
    tr.add_argument("--grad-clip", type=float, default=None,
                    help="dql/edp/cdp: clip each network's gradient to this norm (default: none, as the official "
                         "CDP runs; EDP's own code clips at 4 on hopper / walker2d medium-replay)")
    tr.add_argument("--data-cut", default="transitions", choices=DATA_CUTS,
                    help="what --fraction keeps: random transitions from the whole dataset (the official runs) "
                         "or whole trajectories")
    tr.add_argument("--seeds", type=_seed, nargs="+", default=None,
                    help="several seeds of this config trained together (cdp.rl.ensemble; each run "
                         "in its own folder under --out, default runs/rl/<dataset>); overrides --seed")
    tr.add_argument("--stacked", default=None, action=argparse.BooleanOptionalAction,
                    help="with --seeds: one vectorised update for all seeds (cdp.rl.stacked) or "
                         "one seed after another (--no-stacked); default: stacked on a GPU, in turn on a CPU")
    tr.add_argument("--processes", type=_positive_int, default=None,
                    help="with --seeds: worker processes the seeds are dealt out to, each training its share "
                         "together; default: one per CPU core (at most one per seed) on a CPU, where processes "
                         "use the cores better than threads, one on a GPU")
    tr.add_argument("--preset", default="cdp", choices=PRESETS,
                    help="edp/cdp settings: this project's, or the official CDP runs' (normalised observations "
                         "and rewards, lr decay, their Q term, target / EMA schedules and action selection)")
    tr.add_argument("--exact-max-dim", type=_positive_int, default=EXACT_MAX_DIM,
                    help="cdp: the exact largest eigenvalue for actions of up to this many numbers, Lanczos with 4 "
                         "steps above (8: the earlier default, so Lanczos on kitchen's 9-dim actions)")
    tr.add_argument("--window", default="official", choices=WINDOWS,
                    help="cdp: the term on rows with t <= 0.1, averaged over them (official), or summed over "
                         "t < 0.1 and divided by the batch (cdp 0.1)")
    _run_options(tr, "the data (see --data-cut)", "cdp", steps=100_000, episodes=10,
                 out="runs/rl/<dataset>/<algo>-f<fraction>-s<seed>")
    ev = rls.add_parser("eval", help="evaluate a run folder's last checkpoint")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--episodes", type=_positive_int, default=10, help="evaluation episodes")
    ev.add_argument("--device", default=None, help="where to run it (default: the run's own device)")
    ev.add_argument("--init-noise-scale", type=float, default=None,
                    help="edp / cdp / dql: the sampler's starting noise N(0, scale^2 I) (default: the run's own)")
    ev.add_argument("--temperature", type=_temperature, default=None,
                    help="edp / cdp / dql: pick a candidate from softmax(T * min Q), or 'argmax' (default: the run's own)")
    ev.add_argument("--candidates", type=_positive_int, default=None,
                    help="edp / cdp / dql: candidate actions per state (default: the run's own)")
    il = sub.add_parser("il", help="imitation: scripted demonstrations, diffusion policies, BC-GMM")
    ils = il.add_subparsers(dest="il_command", required=True)
    imd = ils.add_parser("make-data", help="scripted demonstrations in robomimic's HDF5 layout")
    imd.add_argument("task", help="imitation task, e.g. reach")
    imd.add_argument("quality", choices=["ph", "mh"], help="ph: one proficient operator; mh: mixed skill")
    imd.add_argument("--demos", type=_positive_int, default=200, help="demonstrations to record")
    imd.add_argument("--seed", type=_seed, default=0, help="seed of the scripted demonstrator")
    imd.add_argument("--out", default=None, help="file (default data/il/<task>_<quality>.hdf5)")
    imd.add_argument("--camera-render", choices=CAMERA_RENDERS, default=None,
                     help="tasks with cameras: each view drawn once without multisampling or the floor's "
                          "reflection (fast, the default), or robosuite's own rendering")
    itr = ils.add_parser("train", help="train a policy on demonstrations (resumable)")
    itr.add_argument("policy", choices=POLICIES, help="the policy (cdp-* = dp-* + the contraction term)")
    itr.add_argument("--task", required=True, choices=task_names(), help="the task the demonstrations are of")
    itr.add_argument("--dataset", required=True, help="robomimic-layout HDF5 file")
    itr.add_argument("--filter-key", default=None, help="robomimic mask to train on, e.g. train")
    itr.add_argument("--data-cut", default="demos", choices=IL_DATA_CUTS,
                     help="what --fraction keeps: whole demonstrations, or a share of every demonstration's training "
                          "windows (the official runs' available_data_rate)")
    itr.add_argument("--sampler", choices=["ddim", "dpm_solver++", "ddpm"], default="ddim", help="sampler at evaluation")
    itr.add_argument("--sample-steps", type=_positive_int, default=10, help="sampler steps per action chunk")
    itr.add_argument("--batch-size", type=_positive_int, default=256, help="training batch")
    itr.add_argument("--horizon", type=_positive_int, default=16, help="dp-* / cdp-*: actions per predicted chunk (Tp)")
    itr.add_argument("--n-action-steps", type=_positive_int, default=8,
                     help="dp-* / cdp-*: actions executed per chunk (Ta)")
    itr.add_argument("--chunk-start", choices=["history", "current"], default="history",
                     help="dp-* / cdp-*: a chunk begins at the first observed step (Diffusion Policy) or the current "
                          "one (with --horizon 1 --n-action-steps 1: the official low-dim runs' one-action policies)")
    itr.add_argument("--prediction", choices=["eps", "x0"], default="eps",
                     help="dp-* / cdp-*: what the denoiser predicts (Diffusion Policy: eps; the official runs: x0)")
    itr.add_argument("--diffusion-steps", type=_positive_int, default=100,
                     help="dp-* / cdp-*: T of the discrete cosine schedule (the official runs: 50)")
    itr.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    itr.add_argument("--ema-max", type=float, default=None,
                     help="the EMA's largest decay, reached along Diffusion Policy's warm-up (default 0.9999; "
                          "the official runs: a fixed 0.995)")
    itr.add_argument("--subbatch", type=_positive_int, default=None,
                     help="cdp-*: the term on the batch's first this many samples (default: every sample)")
    itr.add_argument("--encoder", choices=["resnet18", "cnn"], default="resnet18",
                     help="image tasks (lift-image): the camera encoder")
    itr.add_argument("--products", choices=["native", "auto", "autograd", "fd"], default="auto",
                     help="cdp-*: the term's Jacobian products: finite differences on extra forward rows where the "
                          "network allows it (auto), always (fd), autograd's double backward (autograd), or the "
                          "network's own else autograd (native: with --exact-max-dim 8, the earlier studies' setting)")
    itr.add_argument("--exact-max-dim", type=_positive_int, default=EXACT_MAX_DIM,
                     help="cdp-*: the exact largest eigenvalue for chunks of up to this many numbers (16 x 7 = 112), "
                          "Lanczos with 4 steps above (8: the earlier studies' estimator, a lower bound often far "
                          "from the top on chunks)")
    _run_options(itr, "the data (see --data-cut)", "cdp-*", steps=20_000, episodes=50, out="runs/il/<task>/<run name>")
    iev = ils.add_parser("eval", help="success rate of a run folder's saved policy (and the stages reached, on Transport)")
    iev.add_argument("run", help="run folder")
    iev.add_argument("--episodes", type=_positive_int, default=50, help="evaluation rollouts")
    iev.add_argument("--which", choices=["policy", "best"], default="policy", help="last or best evaluation's policy")
    iev.add_argument("--device", default=None, help="where to run it (default: the run's own device)")

    rp = sub.add_parser("report", help="markdown tables and learning curves from per-run records")
    rp.add_argument("results", nargs="?", help="folder of per-run records, e.g. results/rl/offline_rl_50k")
    rp.add_argument("--out", default=None, help="where report.md and the plots go (default: the results folder)")
    rp.add_argument("--sync", metavar="FILE", default=None,
                    help="instead: rewrite the tables quoted in FILE (<!-- report: ... --> blocks) from the records")
    rp.add_argument("--check", action="store_true", help="with --sync: change nothing, exit 1 if a table is stale")

    dg = sub.add_parser("diagnose", help="contraction diagnostics of trained diffusion policies, side by side")
    dg.add_argument("runs", nargs="+", help="run folders (offline-RL diffusion agents or imitation diffusion policies)")
    dg.add_argument("--out", default="runs/diagnostics", help="where diagnostics.json / .png go")
    dg.add_argument("--states", type=_positive_int, default=16, help="dataset states to probe")
    dg.add_argument("--steps", type=_positive_int, default=400, help="RK4 steps of the probability-flow ODE (log-SNR grid)")

    rp = sub.add_parser("reproduce", help="the paper's tables and 10%%-data ablation at this machine's scale "
                                          "(every bundled study, resumable; hours: see --quick)")
    rp.add_argument("--quick", action="store_true", help="every study shrunk (steps / 25, one seed): a pipeline check")
    rp.add_argument("--only", nargs="+", default=None, help="study names (default: all)")
    rp.add_argument("--workers", type=_positive_int, default=None, help="parallel runs (default: each study's)")
    rp.add_argument("--device", default=None, help="as cdp sweep's: train every run there (cpu, cuda, cuda:N, mps, auto)")
    rp.add_argument("--out", default=None, help="markdown file (default results/reproduce[-quick].md)")
    rp.add_argument("--report-only", action="store_true", help="train nothing: the page from the records so far")
    rp.add_argument("--time-limit", type=_duration, default=None, metavar="DURATION",
                    help="as cdp sweep's: start only runs that should finish in it; at the limit checkpoint and stop")
    rp.add_argument("--fill", action="store_true", help="as cdp sweep's: with --time-limit, also start runs that "
                                                        "will not finish in it (they resume next time)")
    sw = sub.add_parser("sweep", help="run a grid of training runs, one process each, resumable")
    sw.add_argument("config", nargs="+",
                    help="sweep config (TOML or JSON), e.g. experiments/offline_rl.toml, or the name of a bundled "
                         "study (offline_rl, imitation_lift, ...); several share one queue, in order")
    sw.add_argument("--workers", type=_positive_int, default=None, help="parallel jobs (default: the config's)")
    sw.add_argument("--device", default=None,
                    help="train every run there (cpu, cuda, cuda:N, mps, auto) whatever the configs say; where a "
                         "run trains is not part of its config, so runs resume and count as done across devices")
    sw.add_argument("--dry-run", "--status", action="store_true",
                    help="list the jobs and the state of each (done / running, at which step and by whom / "
                         "stopped part-way / todo); run nothing")
    sw.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local process pool or Ray tasks")
    sw.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray instance")
    sw.add_argument("--time-limit", type=_duration, default=None, metavar="DURATION",
                    help="e.g. 2.5h or 150m: start a run only if it should finish in the time left (at the pace of "
                         "the finished runs), and at the limit checkpoint and stop the running ones (local backend); "
                         "with --status: which runs it would start")
    sw.add_argument("--fill", action="store_true",
                    help="with --time-limit: once no queued run would finish in the time left, start the next "
                         "anyway, to be checkpointed at the limit and resumed by a later sweep (for run folders "
                         "that outlast the slot)")
    sw.add_argument("--ensemble-seeds", action="store_true",
                    help="train the offline-RL runs that differ only in their seed together: on a GPU stacked into "
                         "one vectorised model per config (cdp.rl.stacked; configs that do not stack run each seed "
                         "alone), on a CPU dealt out over the workers, each taking its share in turn")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()  # this process trains or samples: keep freed tensor memory (cdp.runtime)
    from .runlog import RunBusy, RunInterrupted
    from .sweep import SweepFailed

    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError, RunBusy) as e:  # bad input: one clear line, no traceback
        print(f"cdp: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, SweepFailed) as e:  # a run that diverged, a grid with failed runs
        print(f"cdp: error: {e}", file=sys.stderr)
        return 1
    except RunInterrupted as e:  # SIGTERM / Ctrl-C: the run checkpointed its step first
        print(f"cdp: {e}", file=sys.stderr)
        return 128 + e.signum


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, steps=args.steps, eval_episodes=args.eval_episodes, seeds=args.seeds, toy_steps=args.toy_steps,
                 n_data=args.n_data, seed=args.seed, progress=not args.no_progress)
    elif args.command == "rl" and args.rl_command == "train-behaviour":
        from .data.behaviour import BehaviourConfig, train_behaviour
        from .data.generate import default_agent_dir

        cfg = BehaviourConfig(env_id=args.task, total_steps=args.steps, snapshot_every=args.snapshot_every, seed=args.seed)
        snaps = train_behaviour(cfg, args.out or default_agent_dir(args.task, args.seed))
        print(f"{len(snaps)} snapshots; best mean return {max(s.mean_return for s in snaps):.1f}" if snaps else "no snapshots")
    elif args.command == "rl" and args.rl_command == "make-data":
        import minari

        from .data.generate import make_task_dataset, task_dataset_id

        kept = task_dataset_id(args.task, args.quality, args.agent) in minari.list_local_datasets() and not args.overwrite
        did = make_task_dataset(args.task, args.quality, args.agent, args.steps, args.episodes, args.seed,
                                overwrite=args.overwrite)
        print(f"Minari dataset {did} " + ("was already in the local store: kept (--overwrite makes it again)"
                                          if kept else "is in the local store"))
    elif args.command == "rl" and args.rl_command == "train":
        from .rl.trainer import Q_ALGOS, TrainConfig, train

        if args.eta is not None and args.algo not in Q_ALGOS:
            raise ValueError(f"--eta weighs the actor's Q term of {', '.join(Q_ALGOS)}; {args.algo} has none")

        cfg = TrainConfig(algo=args.algo, dataset=args.dataset, env_id=args.env, fraction=args.fraction,
                          data_cut=args.data_cut, window=args.window, form=args.form, preset=args.preset,
                          exact_max_dim=args.exact_max_dim, eta=args.eta, grad_clip=args.grad_clip,
                          gamma=args.gamma, margin=args.margin, critic=args.critic, steps=args.steps, eval_every=args.eval_every,
                          eval_episodes=args.eval_episodes, seed=args.seed, device=args.device, graphs=not args.eager)
        from .rl.trainer import record

        if args.seeds:
            from dataclasses import replace

            from .rl.ensemble import train_ensemble

            cfgs = [replace(cfg, seed=s) for s in args.seeds]
            parent = args.out or f"runs/rl/{cfg.dataset_slug()}"
            outs = [f"{parent}/{c.run_name()}" for c in cfgs]
            processes = args.processes
            if processes is None:
                on_cpu = resolve_device(cfg.device).type == "cpu"
                processes = min(len(cfgs), usable_cores()) if on_cpu else 1
            if processes > 1:  # each process records its runs
                from .sweep import train_seeds

                summaries = train_seeds(cfgs, outs, processes, args.results, args.stacked)
            else:
                summaries = train_ensemble(cfgs, outs, stacked=args.stacked)
                for o in outs if args.results else []:
                    record(o, args.results)
            for c, o, summary in zip(cfgs, outs, summaries):
                print(json.dumps(summary, indent=2))
                print(f"run folder: {o}")
                if args.results:
                    print(f"record: {c.record_path(args.results)}")
        else:
            out = args.out or f"runs/rl/{cfg.dataset_slug()}/{cfg.run_name()}"
            summary = train(cfg, out)
            print(json.dumps(summary, indent=2))
            print(f"run folder: {out}")
            if args.results:
                print(f"record: {record(out, args.results)}")
    elif args.command == "rl" and args.rl_command == "eval":
        from .rl.trainer import evaluate_run

        selection = {k: v for k, v in (("init_noise_scale", args.init_noise_scale), ("n_candidates", args.candidates))
                     if v is not None}
        if args.temperature is not None:
            selection["temperature"] = None if args.temperature == "argmax" else args.temperature
        print(json.dumps(evaluate_run(args.run, args.episodes, device=args.device, selection=selection), indent=2))
    elif args.command == "il" and args.il_command == "make-data":
        from .il.tasks import write_demos

        path = write_demos(args.task, args.quality, args.out, args.demos, args.seed, progress=True,
                           camera_render=args.camera_render)
        print(f"{args.demos} demonstrations of {args.task} ({args.quality}) written to {path}")
    elif args.command == "il" and args.il_command == "train":
        from .il.trainer import ILTrainConfig, record, train as il_train

        icfg = ILTrainConfig(policy=args.policy, task=args.task, dataset=args.dataset, fraction=args.fraction,
                             data_cut=args.data_cut, filter_key=args.filter_key, gamma=args.gamma, margin=args.margin, sampler=args.sampler,
                             sample_steps=args.sample_steps, steps=args.steps, batch_size=args.batch_size,
                             eval_every=args.eval_every, eval_episodes=args.eval_episodes, seed=args.seed,
                             device=args.device, graphs=not args.eager, encoder=args.encoder,
                             products=args.products, exact_max_dim=args.exact_max_dim, horizon=args.horizon,
                             n_action_steps=args.n_action_steps, chunk_start=args.chunk_start,
                             prediction=args.prediction, diffusion_steps=args.diffusion_steps, form=args.form,
                             contraction_subbatch=args.subbatch,
                             **{k: v for k, v in (("lr", args.lr), ("ema_max", args.ema_max)) if v is not None})
        out = args.out or f"runs/il/{args.task}/{icfg.run_name()}"
        print(json.dumps(il_train(icfg, out), indent=2))
        print(f"run folder: {out}")
        if args.results:
            print(f"record: {record(out, args.results)}")
    elif args.command == "il" and args.il_command == "eval":
        from .il.trainer import evaluate_run as il_evaluate_run

        print(json.dumps(il_evaluate_run(args.run, args.episodes, which=args.which, device=args.device), indent=2))
    elif args.command == "report":
        from .report import sync_blocks, write_report

        if args.sync:
            changed = sync_blocks(args.sync, check=args.check)
            verb = "stale" if args.check else "rewritten"
            print(f"{args.sync}: {len(changed)} table{'s' if len(changed) != 1 else ''} {verb}"
                  + "".join(f"\n  {c}" for c in changed))
            return 1 if args.check and changed else 0
        if not args.results:
            raise ValueError("cdp report needs a results folder (or --sync FILE)")
        print(f"report: {write_report(args.results, args.out)}")
    elif args.command == "diagnose":
        from .diagnose import run_diagnostics

        png = run_diagnostics(args.runs, args.out, args.states, args.steps)
        print((png.parent / "diagnostics.md").read_text())
        print(f"diagnostics: {png} (numbers in diagnostics.json, this table in diagnostics.md)")
    elif args.command == "reproduce":
        from .reproduce import reproduce

        reproduce(quick=args.quick, only=args.only, workers=args.workers, out=args.out, report_only=args.report_only,
                  time_limit_s=args.time_limit, fill=args.fill, device=args.device)
    elif args.command == "sweep":
        from .sweep import (current_pace, finished_pace, hours_left, job_state, load_sweep, pace_of_the_day, plan_within,
                            queue, run_sweep, this_machine)

        sweeps = []
        for config in args.config:
            if not Path(config).exists() and "/" not in config and "." not in config:
                from .reproduce import study_path

                config = study_path(config)
            sweeps.append(load_sweep(config))
            if args.workers:
                sweeps[-1].workers = args.workers
            if args.device:
                sweeps[-1].on_device(args.device)
        if args.dry_run:
            states = [(job, *job_state(job)) for job in queue(sweeps)]
            for job, state, detail in states:
                print(f"{state:8s} {job.out}" + (f"  ({detail})" if detail else ""))
            counts = {s: sum(st == s for _, st, _ in states) for s in ("done", "running", "stopped", "todo")}
            print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(states)})")
            jobs = [job for job, _, _ in states]
            workers = max(s.workers or usable_cores() for s in sweeps)
            on_workers = lambda h: f" (~{h / workers:.1f} h on {workers} workers)" if workers > 1 else ""  # noqa: E731
            finished = finished_pace(jobs)  # reads every record once, for both estimates
            left = hours_left(jobs, pace=finished)
            if left:
                print(f"about {left:.1f} h of single-process training left, at the finished runs' own pace"
                      + on_workers(left))
            here = finished_pace(jobs, where=this_machine)
            left_here = hours_left(jobs, pace=finished | here) if here else None
            if left_here:
                print(f"about {left_here:.1f} h at this machine's own pace (the legs trained on a machine like "
                      f"this one: {', '.join(f'{k} {v:.0f} s/1k' for k, v in sorted(here.items()))})"
                      + on_workers(left_here))
            now = current_pace(jobs)
            today = pace_of_the_day(jobs, finished, now, here)
            if now:  # also before any run has finished: the running ones' pace is all there is
                left_now = hours_left(jobs, pace=today)
                paces = ", ".join(f"{k} {v:.0f} s/1k" for k, v in sorted(now.items()))
                if left_now:
                    print(f"about {left_now:.1f} h at the pace the running jobs go now ({paces}; the other kinds' "
                          "finished pace scaled as much)" + on_workers(left_now))
            if args.time_limit:
                todo = [j for j, st, _ in states if st in ("todo", "stopped")]
                plan = plan_within(todo, today, workers, args.time_limit, args.fill)
                print(f"within {args.time_limit / 3600:.2f} h on {workers} worker(s), at the finished runs' pace"
                      + (" scaled to the running runs' pace" if now else "") + ", "
                      f"it would start {len(plan)} of {len(todo)} runs:")
                for job, start, end in plan:
                    print(f"  {job.out}: from {start / 60:.0f} min, "
                          + (f"done at {end / 60:.0f} min" if end is not None else "stopped at the limit, to resume"))
            return 0
        ran = run_sweep(sweeps, backend=args.backend, address=args.address, ensemble_seeds=args.ensemble_seeds,
                        time_limit_s=args.time_limit, fill=args.fill)
        print(f"{len(ran)} runs trained; run folders under {', '.join(dict.fromkeys(s.out for s in sweeps))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
