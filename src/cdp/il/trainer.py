"""One resumable training loop for the imitation policies, and success-rate evaluation.

Policy names as in the paper's table (what each means here, docs/imitation.md):

- ``dp-unet`` / ``dp-dit`` / ``dp-mlp``: Diffusion Policy (eps-prediction, DDPM training on a
  T = 100 cosine schedule, DDIM sampling; ``prediction``, ``diffusion_steps`` and ``sampler``
  change them) with that backbone;
- ``cdp-unet`` / ``cdp-dit`` / ``cdp-mlp``: the same + ``gamma * L_c`` at every diffusion time;
- ``bc-gmm``: robomimic-style BC with a 5-mode Gaussian-mixture head;
- ``dbc-dit``: DBC in its original form, a deterministic chunk policy regularised by a frozen DiT
  diffusion model of the demonstrations (trained in the run's first ``dbc_pretrain_steps``).

A run folder holds ``config.json``, ``metrics.csv``, ``eval.csv``, ``tb/``, ``checkpoint.pt``,
``policy/`` (the EMA policy at the last evaluation, ``save_pretrained`` format), ``best/`` (at the
best evaluation), ``summary.json`` and ``curve.png``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture import GraphedUpdate, graphs_available, host_floats, portable_state
from ..contraction import ContractionConfig
from ..distributed import Group, join, leave
from ..data.robomimic import DemoDataset, read_env_args, read_robomimic
from ..io import atomic_write, config_from_json, fingerprint, stored_reader
from ..runlog import (RunClock, RunLogs, StopSignals, check_finite, load_checkpoint, open_run, plot_eval_curve, read_rows,
                      restore_rng_states, rng_states, save_checkpoint, where_label, write_record)
from ..options import EXACT_MAX_DIM, IL_DATA_CUTS, POLICIES
from ..runtime import check_device_name, resolve_device
from ..update import Update, soft_update
from .bcgmm import BCGMM, BCGMMConfig
from .dbc import DBC, DBCConfig
from .policy import ChunkPolicy, DiffusionPolicy, DiffusionPolicyConfig
from .tasks import TaskSpec, get_task
from .windows import ChunkWindows


@dataclass
class ILTrainConfig:
    policy: str
    task: str
    dataset: str  # robomimic-layout HDF5 file
    fraction: float = 1.0  # share of the data kept (seeded): whole demonstrations or windows (data_cut)
    # "demos": whole demonstrations (the studies here); "windows": a share of all demonstrations'
    # training windows, the normaliser fitted on all the data (the official runs' available_data_rate)
    data_cut: str = "demos"
    filter_key: str | None = None  # robomimic mask, e.g. "train"
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    ema_power: float = 0.75  # Diffusion Policy's EMA warm-up: decay = 1 - (1 + step)^-power, capped
    ema_max: float = 0.9999
    eval_every: int = 5_000
    eval_episodes: int = 50
    checkpoint_every: int = 1_000
    log_every: int = 100
    gamma: float = 0.1  # cdp-* only
    t_max: float | None = None  # cdp-*: imitation applies the term at every t
    margin: float | None = 0.1  # cdp-*: the hinge floor beta (None: no hinge)
    contraction_subbatch: int | None = None
    # cdp-*: the term's Jacobian products and estimator (ContractionConfig's defaults: finite
    # differences, the exact largest eigenvalue up to 256 numbers). The earlier studies ran
    # products="native", exact_max_dim=8 (Lanczos 4 through autograd for any chunk); their
    # configs pin it, and a stored config without these keys means it (SAVED_BEFORE)
    products: str = "auto"
    exact_max_dim: int = EXACT_MAX_DIM
    sampler: str = "ddim"  # or "dpm_solver++", "ddpm"
    sample_steps: int = 10
    # diffusion policies: what the denoiser predicts ("eps", Diffusion Policy; "x0", the official
    # imitation runs) and T of the discrete cosine schedule (the official runs: 50)
    prediction: str = "eps"
    diffusion_steps: int = 100
    form: str = "eig"  # cdp-*: the term's form (ContractionConfig.form; the official runs: "official_frobenius")
    unet_dims: tuple[int, ...] = (64, 128, 256)
    dit_width: int = 128
    dit_depth: int = 4
    dbc_pretrain_steps: int = 2000  # dbc-dit: diffusion-model stage before the policy's
    encoder: str = "resnet18"  # image tasks, diffusion policies: "resnet18" or "cnn" (cdp.nets.vision)
    crop: int = 76  # image tasks: random crop in training, centre crop at inference (84 x 84 images)
    horizon: int = 16  # Tp, diffusion policies (BC-GMM predicts one action)
    n_action_steps: int = 8  # Ta, diffusion policies
    # diffusion policies: a chunk begins at the first observed step ("history", Diffusion Policy)
    # or the "current" one (with horizon 1, Ta 1: the official low-dim runs' one-action policies)
    chunk_start: str = "history"
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:N", "mps" or "auto"; a run may resume on another
    graphs: bool = True  # dp-* / cdp-* on a CUDA device: each step replayed as a CUDA graph (cdp.capture)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {POLICIES}")
        task = get_task(self.task)  # unknown task: one clear error now
        if task.image_keys and not self.policy.startswith(("dp-", "cdp-")):
            raise ValueError(f"{self.task} has camera observations: only the diffusion policies (dp-*, cdp-*) "
                             f"encode images, not {self.policy}")
        if self.encoder not in ("resnet18", "cnn"):
            raise ValueError(f"encoder must be 'resnet18' or 'cnn', got {self.encoder!r}")
        if self.sampler not in ("ddim", "ddpm", "dpm_solver++"):
            raise ValueError(f"sampler must be 'ddim', 'ddpm' or 'dpm_solver++', got {self.sampler!r}")
        if self.prediction not in ("eps", "x0"):
            raise ValueError(f"prediction must be 'eps' or 'x0', got {self.prediction!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_max < 1:
            raise ValueError(f"ema_max must be in [0, 1), got {self.ema_max}")
        if self.data_cut not in IL_DATA_CUTS:
            raise ValueError(f"data_cut must be one of {IL_DATA_CUTS}, got {self.data_cut!r}")
        check_device_name(self.device)
        self.contraction_config()  # gamma, margin, t_max, sub-batch: checked as the term checks them
        for k in ("steps", "batch_size", "diffusion_steps", "eval_every", "eval_episodes", "checkpoint_every", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        self.unet_dims = tuple(self.unet_dims)
        if self.policy.startswith(("dp-", "cdp-")):  # the horizons and the backbone's shape: checked now
            make_policy_config(self, task)

    #: what a config stored before ``products`` / ``exact_max_dim`` existed ran with
    SAVED_BEFORE: ClassVar[dict] = {"products": "native", "exact_max_dim": 8}

    def contraction_config(self) -> ContractionConfig:
        """The term's settings (``cdp-*`` policies use them; checked for every policy)."""
        return ContractionConfig(gamma=self.gamma, t_max=self.t_max, margin=self.margin, form=self.form,
                                 subbatch=self.contraction_subbatch, products=self.products,
                                 exact_max_dim=self.exact_max_dim)

    def run_name(self) -> str:
        name = f"{self.policy}-f{self.fraction:g}"
        if self.data_cut != "demos":
            name += f"-{self.data_cut}"
        if self.policy.startswith(("dp-", "cdp-")) and (self.horizon, self.n_action_steps) != (16, 8):
            name += f"-h{self.horizon}a{self.n_action_steps}"
        if self.policy.startswith(("dp-", "cdp-")) and self.chunk_start != "history":
            name += f"-{self.chunk_start}"
        if self.policy.startswith(("dp-", "cdp-")) and self.prediction != "eps":
            name += f"-pred{self.prediction}"
        if self.policy.startswith(("dp-", "cdp-")) and self.diffusion_steps != 100:
            name += f"-T{self.diffusion_steps}"
        if self.encoder != "resnet18" and get_task(self.task).image_keys:
            name += f"-{self.encoder}"
        if self.policy.startswith("cdp") and self.gamma != 0.1:
            name += f"-g{self.gamma:g}"
        if self.policy.startswith("cdp") and self.margin != 0.1:
            name += f"-m{self.margin if self.margin is None else format(self.margin, 'g')}"
        if self.policy.startswith("cdp") and self.form != "eig":
            name += f"-{self.form}"
        return f"{name}{estimator_suffix(self.policy, self.products, self.exact_max_dim)}-s{self.seed}"

    def record_path(self, results_dir: str | Path) -> Path:
        """Where this run's record goes: ``<results_dir>/<task>/<run name>.json``."""
        return Path(results_dir) / self.task / f"{self.run_name()}.json"


def estimator_suffix(policy: str, products: str, exact_max_dim: int) -> str:
    """The term's estimator as run names spell it: ``-<products>`` unless ``"native"``,
    ``-x<exact_max_dim>`` unless 8 (the earlier studies' Lanczos 4 through autograd,
    :attr:`ILTrainConfig.SAVED_BEFORE`); empty for a policy without the term."""
    if not policy.startswith("cdp"):
        return ""
    return (f"-{products}" if products != "native" else "") + (f"-x{exact_max_dim}" if exact_max_dim != 8 else "")


def make_policy(cfg: ILTrainConfig, task: TaskSpec) -> ChunkPolicy:
    base = dict(obs_keys=task.obs_keys, obs_dim=task.obs_dim, action_dim=task.action_dim)
    if cfg.policy == "bc-gmm":
        return BCGMM(BCGMMConfig(**base))
    if cfg.policy == "dbc-dit":
        return DBC(DBCConfig(**base, pretrain_steps=cfg.dbc_pretrain_steps, dit_width=cfg.dit_width,
                             dit_depth=cfg.dit_depth))
    return DiffusionPolicy(make_policy_config(cfg, task))


def make_policy_config(cfg: ILTrainConfig, task: TaskSpec) -> DiffusionPolicyConfig:
    """A diffusion policy's (``dp-*`` / ``cdp-*``) config for the run."""
    contraction = cfg.contraction_config() if cfg.policy.startswith("cdp") else None
    images = task.image_keys
    vision = dict(image_keys=images, image_size=task.obs_shapes[images[0]][0], crop=cfg.crop,
                  encoder=cfg.encoder) if images else {}
    return DiffusionPolicyConfig(obs_keys=task.obs_keys, obs_dim=task.obs_dim, action_dim=task.action_dim,
                                 horizon=cfg.horizon, n_action_steps=cfg.n_action_steps, chunk_start=cfg.chunk_start,
                                 backbone=cfg.policy.split("-")[1], prediction=cfg.prediction,
                                 train_steps=cfg.diffusion_steps, sampler=cfg.sampler, sample_steps=cfg.sample_steps,
                                 unet_dims=cfg.unet_dims, dit_width=cfg.dit_width, dit_depth=cfg.dit_depth,
                                 contraction=contraction, **vision)


def load_demos(cfg: ILTrainConfig, task: TaskSpec) -> DemoDataset:
    ds = read_robomimic(cfg.dataset, obs_keys=task.obs_keys, filter_key=cfg.filter_key)
    ds.check_against(task.obs_shapes, task.action_dim, task.name)
    return ds.fraction(cfg.fraction, seed=cfg.seed) if cfg.data_cut == "demos" else ds  # windows: cut in training


@torch.no_grad()
def evaluate(policy: ChunkPolicy, task: TaskSpec, episodes: int, seed: int = 0, envs: list | None = None,
             env_kwargs: dict | None = None) -> dict:
    """Success rate over ``episodes`` rollouts from ``reset(seed=seed + i)``. Rollouts run in
    groups of ``len(envs)`` (default ``task.eval_batch``) environments stepped in lockstep with one
    batched ``select_action`` per step: a robosuite environment holds ~240 MB, so they are reused
    group after group. Also the goal orders of successful rollouts where the task records them
    (mode coverage), and where its environment reports ``info["stages"]`` (Transport), the mean
    number of stages each rollout reached at some step (``stages``, with ``stages_se``).
    ``env_kwargs``: for the environments made here (:meth:`TaskSpec.env_kwargs` of the data),
    which are closed at the end; ``envs`` given are left open for the caller to reuse."""
    if envs is None:
        made: list = []
        try:
            return evaluate(policy, task, episodes, seed, fill_eval_envs(made, task, episodes, env_kwargs or {}))
        finally:
            close_all(made)
    policy.eval()
    success = np.zeros(episodes, bool)
    reached: np.ndarray | None = None  # [episodes, stages]: ever held in the rollout
    orders: list[tuple] = []
    for start in range(0, episodes, len(envs)):
        group = envs[:min(len(envs), episodes - start)]
        obs = [env.reset(seed=seed + start + i)[0] for i, env in enumerate(group)]
        policy.reset()
        alive = np.ones(len(group), bool)
        for _ in range(task.horizon):
            batch = {k: np.stack([o[k] for o in obs]) for k in task.obs_keys}
            actions = policy.select_action(batch)
            draw = policy.reads_next_observation()  # cameras are drawn only for the steps a chunk reads
            for i in np.flatnonzero(alive):
                if hasattr(group[i], "render_cameras"):
                    group[i].render_cameras = draw
                obs[i], _, term, trunc, info = group[i].step(actions[i])
                if info.get("success", False):
                    success[start + i] = True
                if "stages" in info:
                    if reached is None:
                        reached = np.zeros((episodes, len(info["stages"])), bool)
                    reached[start + i] |= info["stages"]
                if term or trunc:
                    alive[i] = False
            if not alive.any():
                break
        orders += [tuple(env.order) for i, env in enumerate(group) if success[start + i] and hasattr(env, "order")]
    out = {"success_rate": float(success.mean()), "success_se": float(success.std() / np.sqrt(episodes))}
    if hasattr(envs[0], "order"):  # the task records which goal order each rollout took
        out["modes"] = len(set(orders))
    if reached is not None:
        count = reached.sum(1)
        out["stages"], out["stages_se"] = float(count.mean()), float(count.std() / np.sqrt(episodes))
    return out


def fill_eval_envs(envs: list, task: TaskSpec, episodes: int, env_kwargs: dict) -> list:
    """``envs`` topped up to the group size :func:`evaluate` steps in lockstep (``episodes``, at
    most ``task.eval_batch``), one by one into the caller's list, so that the ones made before a
    failing one are still there for the caller to close (:func:`close_all`)."""
    while len(envs) < min(episodes, task.eval_batch):
        envs.append(task.make_env(**env_kwargs))
    return envs


def close_all(envs: list) -> None:
    """Close every environment, even when one's ``close`` raises (the first error is raised
    after the rest are closed): a robosuite camera environment holds a GL context until then."""
    errors = []
    for env in envs:
        try:
            env.close()
        except Exception as e:  # noqa: BLE001 - the others must still be closed
            errors.append(e)
    if errors:
        raise errors[0]


@torch.no_grad()
def action_spread(policy: ChunkPolicy, obs: torch.Tensor, samples: int = 16, seed: int = 0) -> float:
    """Mean over states of the per-state standard deviation of the executed actions across
    ``samples`` sampler seeds (environment units, averaged over action dims and executed steps).
    obs: ``[S, To, obs_dim]`` states from the dataset. 0 for a deterministic policy."""
    c = policy.config
    rep = obs.repeat_interleave(samples, 0)
    with torch.random.fork_rng(devices=[obs.device] if obs.device.type == "cuda" else []):  # training's noise untouched
        torch.manual_seed(seed)
        chunk = policy.predict_chunk(rep)
    s = policy.action_start
    acts = chunk[:, s:s + c.n_action_steps].reshape(obs.shape[0], samples, -1)
    return float(acts.std(1).mean())


def _ema_decay(step: int, power: float, cap: float) -> float:
    return 0.0 if step <= 0 else min(cap, 1.0 - (1.0 + step) ** -power)


def train(cfg: ILTrainConfig, out_dir: str | Path, progress: bool = True, reenter: bool = True) -> dict:
    """Train (or resume) an imitation run; returns the final summary. ``reenter=False``: a run
    found finished raises :class:`cdp.runlog.RunFinished` instead (see :func:`cdp.runlog.open_run`)."""
    out = Path(out_dir)
    task = get_task(cfg.task)
    demos = load_demos(cfg, task)  # bad data fails here, before anything is written
    device = resolve_device(cfg.device)
    arrays = []
    for name in sorted(demos.demos):  # every demo's observation streams and actions, in a fixed order
        demo = demos.demos[name]
        arrays += [*(demo.obs[k] for k in sorted(demo.obs)), demo.actions]
    seen = fingerprint(arrays)
    group = join(device)  # one process, or this one of those torchrun started
    try:
        if group.world > 1 and not cfg.policy.startswith(("dp-", "cdp-")):
            raise ValueError(f"training on several processes supports the diffusion policies (dp-*, cdp-*), not {cfg.policy}")
        group.rows(cfg.batch_size)  # the batch must divide among the processes
        if not group.is_main:  # rank 0 claims and checks the folder; the others follow its word
            if not group.broadcast_flag(False):
                raise RuntimeError(f"rank 0 could not open the run folder {out} (its error says why)")
            return _train(cfg, out, task, demos, group, progress)
        told = False
        try:
            with open_run(out, asdict(cfg), stored_reader(ILTrainConfig), seen, reenter):  # claimed, checked
                told = group.broadcast_flag(True)
                return _train(cfg, out, task, demos, group, progress)
        finally:
            if not told:
                group.broadcast_flag(False)
    finally:
        leave(group)


class PolicyStep(Update):
    """One imitation training step in the three parts of :class:`cdp.update.Update`: ``compute``
    is the loss, its backward pass and the optimiser step; ``advance`` moves the step and the EMA
    copy (Diffusion Policy's warm-up decay, a function of the step).

    With a process ``group`` of several (:mod:`cdp.distributed`) the batch given is this
    process's share: the diffusion times and noises are drawn for the whole batch (alike in every
    process) and sliced, the gradients and reported losses averaged over the processes."""

    def __init__(self, policy: ChunkPolicy, ema: ChunkPolicy, opt: torch.optim.Optimizer, step: int = 0,
                 ema_power: float = 0.75, ema_max: float = 0.9999, group: Group | None = None) -> None:
        self.policy, self.ema, self.opt, self.step = policy, ema, opt, step
        self.ema_power, self.ema_max = ema_power, ema_max
        self.device = next(policy.parameters()).device
        self.group = group or Group(device=self.device)

    def compute(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g, obs, act = self.group, batch["obs"], batch["act"]
        if g.world > 1:
            t, noise = self.policy.draw_noise(g.world * act.shape[0], self.device)  # type: ignore[attr-defined]
            rows = g.rows(t.shape[0])
            losses = self.policy.compute_loss(obs, act, t[rows], noise[rows])  # type: ignore[call-arg]
        else:
            losses = self.policy.compute_loss(obs, act)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        g.average_gradients(list(self.policy.parameters()))
        self.opt.step()
        if g.world > 1:  # a process may regularise no row where another does: the term's stats stay out
            losses = {k: v for k, v in losses.items() if not k.startswith("contraction_")}
        return g.average({k: v.detach() for k, v in losses.items()})

    def advance(self) -> None:
        self.step += 1
        soft_update(self.ema, self.policy, 1 - _ema_decay(self.step, self.ema_power, self.ema_max))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]


def _train(cfg: ILTrainConfig, out: Path, task: TaskSpec, demos: DemoDataset, group: Group, progress: bool) -> dict:
    """The training loop proper, in a claimed and checked run folder (written by rank 0 alone)."""
    device, main = group.device, group.is_main
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy = make_policy(cfg, task)
    windows = ChunkWindows(demos, task.obs_keys, policy.config.n_obs_steps, policy.config.horizon, policy.action_start)
    policy.set_stats(windows.obs_extremes(), windows.actions.numpy())  # "windows": from all the data, as the official runs
    if cfg.data_cut == "windows":
        windows = windows.cut(cfg.fraction, cfg.seed)
    policy.to(device)
    ema = copy.deepcopy(policy).requires_grad_(False)
    spread_obs = windows.batch(torch.as_tensor(np.random.default_rng(12345).integers(0, len(windows), 64)))[0].to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, state = 0, None
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        policy.load_state_dict(state["policy"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        restore_rng_states(state, device)

    group.broadcast_module(policy), group.broadcast_module(ema)  # one starting point (already alike by the seed)
    trainer = PolicyStep(policy, ema, opt, step, cfg.ema_power, cfg.ema_max, group)
    update = trainer.update
    if cfg.graphs and group.world == 1 and isinstance(policy, DiffusionPolicy) and graphs_available(device):
        update = GraphedUpdate(trainer)
    logs = RunLogs(out, step) if main else None
    clock = RunClock(state, step, where_label(device))
    eval_envs: list = []
    env_kwargs = task.env_kwargs(demos.env_args)  # evaluation renders as the demonstrations were recorded

    def save() -> None:
        if not main:
            return
        save_checkpoint(ckpt, {"policy": policy.state_dict(), "ema": ema.state_dict(), "opt": portable_state(opt),
                               "step": step, "rng": rng.bit_generator.state, **rng_states(device),
                               **clock.state(step)})

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and main), desc=f"{cfg.policy} {cfg.task}")
    policy.train()
    with StopSignals() as stop:
        try:
            while step < cfg.steps:
                idx = rng.integers(0, len(windows), cfg.batch_size)[group.rows(cfg.batch_size)]  # the whole batch's, this share
                obs, act = windows.batch(torch.as_tensor(idx))
                values = host_floats(update({"obs": obs.to(device), "act": act.to(device)}))
                step = trainer.step
                check_finite(step, values, ckpt)  # before any save: a checkpoint on disk predates the bad step
                bar.update(1)
                if logs is not None and step % cfg.log_every == 0:
                    logs.log("train", step, values, seconds=time.perf_counter() - clock.t0)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    if not main:  # rank 0 evaluates; its random draws then set every process's
                        group.sync_rng()
                        stop.step_done(step, cfg.steps, cfg.checkpoint_every, ckpt, save)
                        continue
                    with clock.evaluating():
                        # made at the first evaluation, reused after, closed in `finally`
                        res = evaluate(ema, task, cfg.eval_episodes,
                                       envs=fill_eval_envs(eval_envs, task, cfg.eval_episodes, env_kwargs))
                        res["action_spread"] = action_spread(ema, spread_obs)
                    prev = [float(r["success_rate"]) for r in read_rows(out / "eval.csv")]
                    logs.log("eval", step, res)
                    ema.save_pretrained(out / "policy")
                    if not prev or res["success_rate"] > max(prev):
                        ema.save_pretrained(out / "best")
                    bar.set_postfix(success=f"{res['success_rate']:.2f}")
                    policy.train()
                    group.sync_rng()
                stop.step_done(step, cfg.steps, cfg.checkpoint_every, ckpt, save)  # on a SIGTERM / SIGINT too
        finally:
            bar.close()
            close_all(eval_envs)
            if logs is not None:
                logs.close()
    if not main:
        return {}
    summary = summarize(out, *clock.per_1k_steps(step)) | {"legs": clock.legs(step)}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
    plot_eval_curve(out, "success_rate", "success rate")
    return summary


def summarize(out: Path, sec_per_1k: float, train_sec_per_1k: float, last: int = 3) -> dict:
    """Success at the last evaluation, the max over evaluations (robomimic's report), and the mean
    of the last ``last`` evaluations."""
    rows = read_rows(out / "eval.csv")
    s = [float(r["success_rate"]) for r in rows]
    summary = {"step": int(rows[-1]["step"]), "final": s[-1], "best": max(s), f"mean_last{last}": float(np.mean(s[-last:])),
               "evals": len(rows), "seconds_per_1k_steps": sec_per_1k, "train_seconds_per_1k_steps": train_sec_per_1k}
    if rows[-1].get("modes"):
        summary["modes_final"] = int(float(rows[-1]["modes"]))
    if rows[-1].get("stages"):
        summary["stages_final"] = float(rows[-1]["stages"])
    if rows[-1].get("action_spread"):
        summary["action_spread_final"] = float(rows[-1]["action_spread"])
    return summary


def record(run_dir: str | Path, results_dir: str | Path) -> Path:
    """The run's record at :meth:`ILTrainConfig.record_path` (see :func:`cdp.runlog.write_record`)."""
    run = Path(run_dir)
    return write_record(run, config_from_json(ILTrainConfig, run / "config.json", "an imitation").record_path(results_dir))


def evaluate_run(run_dir: str | Path, episodes: int = 50, seed: int = 0, which: str = "policy",
                 device: str | None = None) -> dict:
    """Evaluate a run folder's saved policy (``policy`` = last, ``best``) on ``device`` (default:
    the run's own)."""
    from .policy import load_policy

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    cfg = config_from_json(ILTrainConfig, run / "config.json", "an imitation")
    policy = load_policy(run / which).to(resolve_device(device or cfg.device))
    task = get_task(cfg.task)
    # rollouts as the demonstrations were recorded, where the data is still there
    env_kwargs = task.env_kwargs(read_env_args(cfg.dataset)) if Path(cfg.dataset).is_file() else {}
    return evaluate(policy, task, episodes, seed, env_kwargs=env_kwargs)
