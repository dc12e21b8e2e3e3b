"""One training loop for every offline-RL algorithm: data, checkpoints, metrics, evaluation.

A run folder holds ``config.json``, ``metrics.csv`` (training losses), ``eval.csv``
(normalised scores), ``tb/`` (the same as TensorBoard scalars), ``checkpoint.pt`` (written atomically; a run resumes from it) and
``curve.png``. A non-finite loss stops the run with a message and keeps the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture import GraphedCall, GraphedUpdate, graphs_available, host_floats
from ..contraction import ContractionConfig
from ..data import DATA_CUTS, Transitions, d4rl_reference, normalized_score
from ..envs import make_env
from ..io import atomic_write, config_from_json, fingerprint, stored_reader
from ..runlog import (RunClock, RunLogs, StopSignals, check_finite, load_checkpoint, open_run, plot_eval_curve, read_rows,
                      restore_rng_states, rng_states, save_checkpoint, where_label, write_record)
from ..options import ALGOS, EXACT_MAX_DIM, PRESETS, Q_ALGOS
from ..runtime import check_device_name, resolve_device
from .bc import BC, BCConfig
from .edp import EDP, EDPConfig
from .iql import IDQL, IDQLConfig
from .tasks import TaskSettings, task_settings


@dataclass
class TrainConfig:
    algo: str
    dataset: str  # a Minari dataset id in the local store, or a path to a D4RL .hdf5 file
    env_id: str | None = None  # evaluation task; read from the Minari dataset when None
    fraction: float = 1.0  # keep this share of the data (seeded), cut as data_cut says
    data_cut: str = "transitions"  # "transitions" (the official data_portion) or whole "trajectories"
    steps: int = 100_000
    batch_size: int = 256
    eval_every: int = 5_000
    eval_episodes: int = 10
    checkpoint_every: int = 5_000
    log_every: int = 100
    critic: str = "td3"  # edp / cdp: "td3" or "iql"
    # dql / edp / cdp: the weight of the actor's Q term; None: the task's published value
    # (cdp.rl.tasks: 0.005 on kitchen, 1 on the MuJoCo tasks), filled in here so every saved
    # config names the value it trained with; unused (None) by bc / idql
    eta: float | None = None
    # dql / edp / cdp: clip each network's gradient to this norm (None: no clipping, as the official
    # CDP runs; EDP's own code clips at 4 on hopper / walker2d medium-replay)
    grad_clip: float | None = None
    gamma: float = 0.1  # cdp only
    t_max: float | None = 0.1  # cdp only: the official offline-RL window (t <= 0.1: 5 of 50 levels)
    window: str = "official"  # cdp only: "official" (mean over the window's rows) or "batch" (cdp 0.1's form)
    margin: float | None = 0.1  # cdp only: the hinge floor beta (None: no hinge); beta of Frobenius forms
    form: str = "eig"  # cdp only: "eig" (the paper's hinge) or "official_frobenius" (the official runs' loss), ...
    # cdp only: the exact largest eigenvalue for actions of up to this many numbers, Lanczos with 4
    # steps above (kitchen's 9-dim actions: exact; the earlier default was 8, so Lanczos there)
    exact_max_dim: int = EXACT_MAX_DIM
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:N", "mps" or "auto"; a run may resume on another
    graphs: bool = True  # on a CUDA device: the update and action selection replayed as CUDA graphs (cdp.capture)
    preset: str = "cdp"  # edp / cdp: "cdp" (this project's settings) or "official" (the official CDP runs': PRESETS)

    #: what a stored config without a key meant: runs before the per-task Q weight all trained at 1
    SAVED_BEFORE: ClassVar[dict] = {"eta": 1.0}

    def task(self) -> TaskSettings:
        """The published per-task settings for this run's dataset (:func:`cdp.rl.tasks.task_settings`)."""
        return task_settings(self.dataset, self.env_id)

    def run_name(self) -> str:
        """``<algo>-f<fraction>-s<seed>``, plus any departure from the defaults that changes the
        method (critic style, a Q weight other than the task's published one, gradient clipping,
        gamma, window), so runs of one grid never share a folder."""
        name = f"{self.algo}-f{self.fraction:g}"
        if self.critic != "td3":
            name += f"-{self.critic}"
        if self.algo in Q_ALGOS and self.eta != self.task().eta:
            name += f"-eta{self.eta:g}"
        if self.grad_clip is not None:
            name += f"-clip{self.grad_clip:g}"
        if self.algo == "cdp" and self.gamma != 0.1:
            name += f"-g{self.gamma:g}"
        if self.algo == "cdp" and self.t_max != 0.1:
            name += f"-tmax{self.t_max if self.t_max is None else format(self.t_max, 'g')}"
        if self.algo == "cdp" and self.margin != 0.1:
            name += f"-m{self.margin if self.margin is None else format(self.margin, 'g')}"
        if self.algo == "cdp" and self.form != "eig":
            name += f"-{self.form}"
        if self.algo == "cdp" and self.exact_max_dim != EXACT_MAX_DIM:
            name += f"-x{self.exact_max_dim}"
        if self.preset != "cdp":
            name += f"-{self.preset}"
        return f"{name}-s{self.seed}"

    def contraction_config(self) -> ContractionConfig:
        """The term's settings (``cdp`` uses them; checked for every algorithm)."""
        # the actor's own fused products (MLPDenoiser.forward_jvp), as the bundled studies ran
        return ContractionConfig(gamma=self.gamma, t_max=self.t_max, margin=self.margin, window=self.window,
                                 form=self.form, products="native", exact_max_dim=self.exact_max_dim)

    def dataset_slug(self) -> str:
        """The dataset as one folder name: a Minari id with ``/`` as ``_``; a file by its name
        alone, so a relative and an absolute path to it name the same folder."""
        if self.dataset.endswith((".hdf5", ".h5")):
            return Path(self.dataset).stem
        return self.dataset.replace("/", "_")

    def record_path(self, results_dir: str | Path) -> Path:
        """Where this run's record goes: ``<results_dir>/<dataset_slug>/<run name>.json``."""
        return Path(results_dir) / self.dataset_slug() / f"{self.run_name()}.json"

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose from {ALGOS}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.data_cut not in DATA_CUTS:
            raise ValueError(f"data_cut must be one of {DATA_CUTS}, got {self.data_cut!r}")
        if self.algo not in Q_ALGOS:
            self.eta = None  # no Q term (a stored config of the runs before it may say 1)
        elif self.eta is None:
            self.eta = self.task().eta
        elif not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta (the Q term's weight) must be a finite number >= 0, got {self.eta}")
        clip = self.grad_clip
        if clip is not None and (self.algo not in Q_ALGOS or not (math.isfinite(clip) and clip > 0)):
            raise ValueError(f"grad_clip (a gradient-norm bound for {', '.join(Q_ALGOS)}) must be a finite number > 0, "
                             f"got {self.grad_clip} for {self.algo}")
        self.contraction_config()  # gamma, margin, t_max, window, form: checked as the term checks them
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.preset == "official" and self.algo not in ("edp", "cdp"):
            raise ValueError(f"the official preset is the official EDP / CDP runs' settings, not {self.algo}'s")
        check_device_name(self.device)
        for k in ("steps", "batch_size", "eval_every", "eval_episodes", "checkpoint_every", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")


def load_dataset(spec: str) -> tuple[Transitions, str | None]:
    """``(transitions, env_id or None)`` from a Minari id or a D4RL HDF5 path."""
    if spec.endswith((".hdf5", ".h5")):
        from ..data import load_d4rl_hdf5

        return load_d4rl_hdf5(spec), None
    import minari

    from ..data import load_minari

    tr = load_minari(spec)
    env_spec = minari.load_dataset(spec).spec.env_spec
    if env_spec is not None and env_spec.id == "FrankaKitchen-v1":  # dict observations: the flat registered env
        from ..data.kitchen import env_for_tasks

        return tr, env_for_tasks(env_spec.kwargs.get("tasks_to_complete", ()))
    return tr, (env_spec.id if env_spec is not None else None)


def make_agent(cfg: TrainConfig, obs_dim: int, act_dim: int, device: str | torch.device = "cpu") -> BC | EDP | IDQL:
    if cfg.algo == "bc":
        return BC(obs_dim, act_dim, BCConfig(), device)
    if cfg.algo == "dql":
        return EDP(obs_dim, act_dim, EDPConfig.dql(eta=cfg.eta, grad_clip=cfg.grad_clip), device)
    if cfg.algo == "idql":
        return IDQL(obs_dim, act_dim, IDQLConfig(), device)
    contraction = cfg.contraction_config() if cfg.algo == "cdp" else None
    if cfg.preset == "official":
        return EDP(obs_dim, act_dim, EDPConfig.official(cfg.steps, critic=cfg.critic, contraction=contraction,
                                                        eta=cfg.eta, temperature=cfg.task().weight_temperature,
                                                        grad_clip=cfg.grad_clip), device)
    return EDP(obs_dim, act_dim, EDPConfig(critic=cfg.critic, contraction=contraction, eta=cfg.eta,
                                           grad_clip=cfg.grad_clip), device)


@dataclass
class DataTransform:
    """What a preset does to the data before training, and to observations at evaluation:
    ``obs -> (obs - obs_mean) / obs_std``, ``reward -> reward * reward_factor``."""

    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    reward_factor: float = 1.0

    @classmethod
    def for_run(cls, cfg: TrainConfig, full: Transitions) -> DataTransform:
        """From the whole dataset (before the data cut), as the official runs compute them: the
        observations' mean / std, and 1000 / (max - min episode return) for the rewards where the
        task's dataset class rescales them (the MuJoCo tasks; kitchen's leaves them)."""
        if cfg.preset != "official":
            return cls()
        factor = 1.0
        if cfg.task().normalize_reward:
            rets = full.episode_returns()
            spread = float(rets.max() - rets.min())
            factor = 1000.0 / spread if spread > 0 else 1.0
        return cls(full.observations.mean(0), full.observations.std(0) + 1e-6, factor)

    def obs(self, x: np.ndarray) -> np.ndarray:
        return x if self.obs_mean is None else ((x - self.obs_mean) / self.obs_std).astype(np.float32)

    def data(self, d: Transitions) -> Transitions:
        if self.obs_mean is None and self.reward_factor == 1.0:
            return d
        return Transitions(self.obs(d.observations), d.actions, d.rewards * self.reward_factor,
                           self.obs(d.next_observations), d.terminals, d.timeouts, d.episode)


def env_spaces(env_id: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(observation shape, action shape)`` of ``env_id``, from an environment made for it and closed."""
    with contextlib.closing(make_env(env_id)) as env:
        return env.observation_space.shape, env.action_space.shape


def check_spaces(data: Transitions, env_id: str) -> None:
    o, a = env_spaces(env_id)
    if o != (data.obs_dim,) or a != (data.act_dim,):
        raise ValueError(f"dataset spaces obs {data.obs_dim} / act {data.act_dim} do not match {env_id}'s {o} / {a}")


def evaluate(agent: BC | EDP | IDQL, env_id: str, episodes: int, seed: int,
             transform: DataTransform | None = None, policy: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> list[float]:
    """Returns of ``episodes`` episodes run side by side in a synchronous vector env, so the
    policy acts on a batch of states per step (episode i is seeded ``seed + i``); the policy
    sees observations through ``transform`` (the one its training data went through).
    ``policy``: what maps states to actions (default ``agent.act``; a trainer passes its graphed
    version)."""
    transform = transform or DataTransform()
    policy = policy or agent.act
    import gymnasium as gym

    make_env(env_id).close()  # a bad id: one clear error here, not inside the vector env
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(episodes)])
    with contextlib.closing(envs):
        obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
        totals = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            act = np.zeros((episodes, *envs.single_action_space.shape), dtype=np.float32)
            idx = np.flatnonzero(running)
            act[idx] = policy(torch.as_tensor(transform.obs(obs[idx]), dtype=torch.float32,
                                              device=agent.device)).cpu().numpy()
            obs, r, term, trunc, _ = envs.step(act)
            totals += np.where(running, r, 0.0)
            running &= ~(term | trunc)  # a finished env autoresets; its later steps are ignored
    return totals.tolist()


def load_run_data(cfg: TrainConfig) -> tuple[Transitions, str, DataTransform]:
    """The whole dataset a config names, its evaluation task (checked against the data's spaces)
    and the preset's transform; a setting the agent rejects fails here, before anything is
    written."""
    full, env_from_data = load_dataset(cfg.dataset)
    env_id = cfg.env_id or env_from_data
    if env_id is None:
        raise ValueError("the dataset names no environment: pass env_id")
    check_spaces(full, env_id)
    make_agent(cfg, full.obs_dim, full.act_dim, "cpu")
    return full, env_id, DataTransform.for_run(cfg, full)


def run_cut(cfg: TrainConfig, full: Transitions, transform: DataTransform) -> Transitions:
    """The run's share of the data (its seed's cut), transformed as its preset says."""
    return transform.data(full.fraction(cfg.fraction, seed=cfg.seed, cut=cfg.data_cut))


def claim_run(cfg: TrainConfig, out: Path, data: Transitions, reenter: bool = True):
    """:func:`cdp.runlog.open_run` for this config and the fingerprint of its data."""
    seen = fingerprint([data.observations, data.actions, data.rewards, data.next_observations, data.terminals])
    return open_run(out, asdict(cfg), stored_reader(TrainConfig), seen, reenter)


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True, reenter: bool = True) -> dict:
    """Train (or resume) a run; returns the final summary. ``reenter=False``: a run found finished
    raises :class:`cdp.runlog.RunFinished` instead (see :func:`cdp.runlog.open_run`)."""
    out = Path(out_dir)
    full, env_id, transform = load_run_data(cfg)
    data = run_cut(cfg, full, transform)
    device = resolve_device(cfg.device)
    with claim_run(cfg, out, data, reenter):  # claimed, checked
        return _train(cfg, out, data, env_id, device, progress, transform)


def transition_tensors(data: Transitions, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The dataset as the agents' batch keys, on ``device``. ``done`` is the terminal flag alone:
    a terminal state has no future (no bootstrap), a timeout only cut the episode short, so its
    next state is bootstrapped like any other."""
    arrays = {"obs": data.observations, "act": data.actions, "rew": data.rewards,
              "next_obs": data.next_observations, "done": data.terminals.astype(np.float32)}
    return {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}


class _Run:
    """One run's training state and the body of its loop, in a claimed and checked run folder.
    :func:`train` steps one; :func:`train_ensemble` steps several side by side. ``private_rng``:
    the run draws from its own generators (seeded as a run alone would be), not torch's default;
    ``eager``: no CUDA graphs (the agent's weights are about to be stacked with others')."""

    def __init__(self, cfg: TrainConfig, out: Path, data: Transitions, env_id: str, device: torch.device,
                 transform: DataTransform, private_rng: bool = False, eager: bool = False) -> None:
        self.cfg, self.out, self.env_id, self.device, self.transform = cfg, out, env_id, device, transform
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.agent = agent = make_agent(cfg, data.obs_dim, data.act_dim, device)
        if private_rng:
            agent.own_generators()
        self.ckpt = out / "checkpoint.pt"
        state = None
        if self.ckpt.is_file():
            state = load_checkpoint(self.ckpt)
            agent.load_state_dict(state["agent"])
            self.rng.bit_generator.state = state["rng"]
            restore_rng_states(state, device, agent.host_generator, agent.generator)
        self.n = len(data)
        self.tensors = transition_tensors(data, device)
        try:
            self.ref = d4rl_reference(env_id)
        except KeyError:
            self.ref = None
        self.update, self.act = agent.update, agent.act
        if cfg.graphs and graphs_available(device) and not eager:
            self.update, self.act = GraphedUpdate(agent), GraphedCall(agent.act, generator=agent.generator)
        self.logs = RunLogs(out, agent.step)
        self.clock = RunClock(state, agent.step, where_label(device))

    @property
    def done(self) -> bool:
        return self.agent.step >= self.cfg.steps

    def save(self) -> None:
        a = self.agent
        save_checkpoint(self.ckpt, {"agent": a.state_dict(), "rng": self.rng.bit_generator.state,
                                    **rng_states(self.device, a.host_generator, a.generator),
                                    **self.clock.state(a.step)})

    def batch(self) -> dict[str, torch.Tensor]:
        """The next batch of transitions, drawn from the run's own numpy generator."""
        idx = torch.as_tensor(self.rng.integers(0, self.n, self.cfg.batch_size), device=self.device)
        return {k: v[idx] for k, v in self.tensors.items()}

    def launch(self) -> dict[str, torch.Tensor]:
        """Draw a batch and queue one update; its losses as device tensors (read by :meth:`finish`)."""
        return self.update(self.batch())

    def finish(self, losses: dict[str, torch.Tensor], stop: StopSignals) -> dict | None:
        """Read the step's losses, log, evaluate and checkpoint on schedule; the evaluation row
        when there was one."""
        cfg, step = self.cfg, self.agent.step
        metrics = host_floats(losses)
        check_finite(step, metrics, self.ckpt)
        if step % cfg.log_every == 0:
            self.logs.log("train", step, metrics, seconds=time.perf_counter() - self.clock.t0)
        row = None
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with self.clock.evaluating():
                rets = evaluate(self.agent, self.env_id, cfg.eval_episodes, seed=1_000_000 + step,
                                transform=self.transform, policy=self.act)
            row = {"return_mean": float(np.mean(rets)), "return_se": float(np.std(rets) / np.sqrt(len(rets)))}
            if self.ref is not None:
                scores = [normalized_score(r, self.ref).value for r in rets]
                row |= {"d4rl_score_mean": float(np.mean(scores)),
                        "d4rl_score_se": float(np.std(scores) / np.sqrt(len(scores)))}
            self.logs.log("eval", step, row)
        stop.step_done(step, cfg.steps, cfg.checkpoint_every, self.ckpt, self.save)  # on a SIGTERM / SIGINT too
        return row

    def close(self) -> None:
        self.logs.close()

    def summary(self) -> dict:
        step = self.agent.step
        summary = summarize(self.out, self.ref.source if self.ref else None, *self.clock.per_1k_steps(step)) | {
            "legs": self.clock.legs(step)}
        atomic_write(self.out / "summary.json", json.dumps(summary, indent=2).encode())
        plot_curve(self.out)
        return summary


def _train(cfg: TrainConfig, out: Path, data: Transitions, env_id: str, device: torch.device, progress: bool,
           transform: DataTransform) -> dict:
    """The training loop proper, in a claimed and checked run folder."""
    run = _Run(cfg, out, data, env_id, device, transform)
    bar = tqdm(total=cfg.steps, initial=run.agent.step, disable=not progress, desc=f"{cfg.algo} {Path(cfg.dataset).name}")
    with StopSignals() as stop:
        try:
            while not run.done:
                row = run.finish(run.launch(), stop)
                bar.update(1)
                if row is not None:
                    bar.set_postfix(ret=f"{row['return_mean']:.0f}")
        finally:
            bar.close()
            run.close()
    return run.summary()


#: how an EDP / CDP / DQL agent picks its action, which :func:`evaluate_run` may change
SELECTION_KEYS = ("init_noise_scale", "temperature", "n_candidates")


def evaluate_run(run_dir: str | Path, episodes: int = 10, seed: int = 2_000_000, device: str | None = None,
                 selection: dict | None = None) -> dict:
    """Evaluate a run folder's last checkpoint (on ``device``, default the run's own): mean and
    standard error of return and, where the task has one, of the D4RL-normalised score (the
    reference is named in the result). ``selection``: action-selection settings of an EDP / CDP /
    DQL agent to evaluate with instead of its own (:data:`SELECTION_KEYS`: the sampler's starting
    noise scale, the candidates' softmax temperature, None for argmax, and their number); the
    result names the settings it used."""
    run = Path(run_dir)
    if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (needs config.json and checkpoint.pt)")
    cfg = config_from_json(TrainConfig, run / "config.json", "an offline-RL")
    data, data_env = load_dataset(cfg.dataset) if cfg.env_id is None or cfg.preset != "cdp" else (None, None)
    env_id = cfg.env_id or data_env
    transform = DataTransform.for_run(cfg, data) if data is not None else DataTransform()
    if env_id is None:
        raise ValueError("the run names no environment")
    (obs_dim,), (act_dim,) = env_spaces(env_id)
    agent = make_agent(cfg, obs_dim, act_dim, resolve_device(device or cfg.device))
    agent.load_state_dict(load_checkpoint(run / "checkpoint.pt")["agent"])
    chosen = {}
    if isinstance(agent, EDP):
        unknown = set(selection or {}) - set(SELECTION_KEYS)
        if unknown:
            raise ValueError(f"unknown action-selection settings {sorted(unknown)}; known: {list(SELECTION_KEYS)}")
        agent.cfg = replace(agent.cfg, **(selection or {}))  # checked as the config checks them
        chosen = {"selection": {k: getattr(agent.cfg, k) for k in SELECTION_KEYS}}
    elif selection:
        raise ValueError(f"{cfg.algo} runs select actions their own way; action-selection settings are for "
                         "edp / cdp / dql runs")
    rets = evaluate(agent, env_id, episodes, seed, transform)
    res = {"env_id": env_id, "episodes": episodes, "step": agent.step, **chosen, "return_mean": float(np.mean(rets)),
           "return_se": float(np.std(rets) / np.sqrt(episodes))}
    try:
        ref = d4rl_reference(env_id)
        sc = [normalized_score(r, ref).value for r in rets]
        res |= {"d4rl_score_mean": float(np.mean(sc)), "d4rl_score_se": float(np.std(sc) / np.sqrt(episodes)),
                "score_reference": ref.source}
    except KeyError:
        pass
    return res


def record(run_dir: str | Path, results_dir: str | Path) -> Path:
    """The run's record at :meth:`TrainConfig.record_path` (see :func:`cdp.runlog.write_record`)."""
    run = Path(run_dir)
    return write_record(run, config_from_json(TrainConfig, run / "config.json", "an offline-RL").record_path(results_dir))


def summarize(out: Path, ref_source: str | None, sec_per_1k: float, train_sec_per_1k: float) -> dict:
    """Final and best evaluation score, and wall time per 1k steps with and without evaluations
    (over all the run's steps, every process that trained it: :class:`cdp.runlog.RunClock`)."""
    rows = read_rows(out / "eval.csv")
    key = "d4rl_score_mean" if ref_source else "return_mean"
    vals = [float(r[key]) for r in rows]
    return {"step": int(rows[-1]["step"]), "final": vals[-1], "best": max(vals), "metric": key,
            "score_reference": ref_source, "evals": len(rows), "seconds_per_1k_steps": sec_per_1k,
            "train_seconds_per_1k_steps": train_sec_per_1k}


def plot_curve(out: Path) -> None:
    rows = read_rows(out / "eval.csv")
    key = "d4rl_score_mean" if "d4rl_score_mean" in rows[0] else "return_mean"
    plot_eval_curve(out, key, "D4RL-normalised score" if key.startswith("d4rl") else "return")
