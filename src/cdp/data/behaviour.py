"""Behaviour agents for D4RL-style datasets: a stable-baselines3 SAC agent trained on a
Gymnasium MuJoCo task, with small policy snapshots at regular stages.

The snapshots (actor weights only, ~0.3 MB each, and their evaluated returns in
``snapshots.json``) are what dataset generation needs: the final one is the expert, the one
near a third of the expert's return is "medium", and the sequence up to it re-rolls a
medium-replay-like mixture in seconds. Training resumes from ``.resume/`` (model + replay
buffer, large, never committed) after an interruption.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write, save_or_check_config, stored_reader

ALGOS = ("SAC",)


@dataclass
class BehaviourConfig:
    env_id: str = "Hopper-v5"
    algo: str = "SAC"
    total_steps: int = 300_000
    snapshot_every: int = 20_000
    eval_episodes: int = 5
    learning_starts: int = 10_000  # SB3's SAC default is 100; random data first, as D4RL's replay had
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.total_steps < 1 or self.snapshot_every < 1 or self.eval_episodes < 1:
            raise ValueError("total_steps, snapshot_every and eval_episodes must be positive")


@dataclass
class Snapshot:
    step: int
    mean_return: float
    path: str  # relative to the agent folder


def _check_env(env_id: str):
    from ..envs import make_env

    return make_env(env_id)


def load_snapshots(agent_dir: str | Path) -> list[Snapshot]:
    path = Path(agent_dir) / "snapshots.json"
    if not path.is_file():
        raise FileNotFoundError(f"no behaviour agent at {agent_dir} (missing snapshots.json); train one first")
    return [Snapshot(**s) for s in json.loads(path.read_text())]


def evaluate_actor(actor: torch.nn.Module | None, env_id: str, episodes: int, seed: int,
                   deterministic: bool = True) -> float:
    """Mean undiscounted return over ``episodes`` episodes of a snapshot actor (``None``:
    uniformly random actions)."""
    env = _check_env(env_id)
    env.action_space.seed(seed)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            act = env.action_space.sample() if actor is None else actor_action(actor, obs, deterministic)
            obs, r, term, trunc, _ = env.step(act)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def actor_action(actor: torch.nn.Module, obs: np.ndarray, deterministic: bool) -> np.ndarray:
    with torch.no_grad():
        a = actor(torch.as_tensor(obs, dtype=torch.float32)[None], deterministic=deterministic)
    return a[0].numpy()


def make_actor(env_id: str, state_dict: dict | None = None) -> torch.nn.Module:
    """An SB3 SAC actor for ``env_id`` (squashed Gaussian, actions in the env's [-1, 1] box)."""
    from stable_baselines3 import SAC

    env = _check_env(env_id)
    box = env.action_space
    if not (np.allclose(box.low, -1) and np.allclose(box.high, 1)):  # the actor's outputs are in [-1, 1]
        raise ValueError(f"{env_id}: only tasks with actions in [-1, 1] are supported, got [{box.low}, {box.high}]")
    actor = SAC("MlpPolicy", env, buffer_size=1, device="cpu").policy.actor  # no 1M-step replay buffer for a policy
    if state_dict is not None:
        actor.load_state_dict(state_dict)
    return actor.eval()


def load_actor(agent_dir: str | Path, snap: Snapshot, env_id: str) -> torch.nn.Module:
    return make_actor(env_id, torch.load(Path(agent_dir) / snap.path, map_location="cpu", weights_only=True))


def train_behaviour(cfg: BehaviourConfig, out_dir: str | Path, progress: bool = True) -> list[Snapshot]:
    """Train (or resume) the behaviour agent, writing a snapshot every ``snapshot_every`` steps."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.callbacks import BaseCallback

    out = Path(out_dir)
    resume = out / ".resume"
    env = _check_env(cfg.env_id)
    save_or_check_config(out, asdict(cfg), budget_key="total_steps", read_stored=stored_reader(BehaviourConfig))
    snaps = load_snapshots(out) if (out / "snapshots.json").is_file() else []

    if (resume / "model.zip").is_file():
        model = SAC.load(resume / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(resume / "replay.pkl")
    elif snaps:
        raise ValueError(f"{out} has snapshots up to step {snaps[-1].step} but no resume state in {resume} "
                         "(it is not committed); train in a new folder")
    else:
        model = SAC("MlpPolicy", env, seed=cfg.seed, learning_starts=cfg.learning_starts, device="cpu", verbose=0)
    # SB3's default logger makes an SB3-<time> folder in the temp directory even with no output;
    # the snapshots are this trainer's log
    model.set_logger(Logger(folder=None, output_formats=[]))

    class Snapshots(BaseCallback):
        def _on_step(self) -> bool:
            step = self.model.num_timesteps
            if step % cfg.snapshot_every == 0 or step == cfg.total_steps:
                actor = self.model.policy.actor
                ret = evaluate_actor(actor, cfg.env_id, cfg.eval_episodes, seed=10_000 + step)
                rel = f"snapshots/step_{step:07d}.pt"
                (out / "snapshots").mkdir(parents=True, exist_ok=True)
                torch.save({k: v.clone() for k, v in actor.state_dict().items()}, out / rel)
                snaps.append(Snapshot(step, ret, rel))
                atomic_write(out / "snapshots.json", json.dumps([asdict(s) for s in snaps], indent=1).encode())
                resume.mkdir(exist_ok=True)
                self.model.save(resume / "model.zip")
                self.model.save_replay_buffer(resume / "replay.pkl")
                if progress:
                    print(f"[{cfg.env_id}] step {step:,}: mean return {ret:.1f}", flush=True)
            return True

    remaining = cfg.total_steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=Snapshots(), reset_num_timesteps=False, progress_bar=False)
    return snaps
