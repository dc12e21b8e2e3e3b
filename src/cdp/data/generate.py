"""D4RL-style datasets made here, from a behaviour agent's snapshots, recorded as Minari datasets.

Qualities (as D4RL defines them, approximately):
  ``expert``         rollouts of the best snapshot's stochastic policy;
  ``medium``         rollouts of the snapshot whose return is closest to a third of the expert's;
  ``medium-replay``  what the agent's replay buffer held up to medium: random actions for the
                     first ``learning_starts`` steps, then each snapshot up to medium rolled out
                     for ``snapshot_every`` steps (a re-roll of the buffer, not the buffer itself);
  ``random``         uniform random actions.

How this differs from D4RL: Gymnasium v5 tasks (D4RL used v2 under mujoco-py), SB3 SAC rather
than D4RL's agents, fewer transitions by default, and medium-replay re-rolled from snapshots.
The Minari dataset's own reference scores are the random policy's and the expert snapshot's
mean returns — report D4RL-normalised scores with D4RL's references, and say which one is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .behaviour import Snapshot, _check_env, actor_action, evaluate_actor, load_actor, load_snapshots

QUALITIES = ("random", "medium", "medium-replay", "expert")


def dataset_id(env_id: str, quality: str, agent: str | None = None) -> str:
    """``cdp/hopper/medium-replay-v0`` for ``Hopper-v5`` and the default agent;
    ``cdp/walker2d/medium-replay-sac-s1-v0`` for the agent tagged ``sac-s1`` (:func:`agent_tag`)."""
    return f"cdp/{env_id.split('-')[0].lower()}/{quality}{'-' + agent if agent else ''}-v0"


def agent_tag(env_id: str, agent_dir: str | Path | None) -> str | None:
    """What names an agent in a dataset id: None for the default agent
    (``data/agents/<task>-sac-s0``, whose datasets keep their short ids), else its folder's name
    less the task prefix (``data/agents/walker2d-v5-sac-s1`` -> ``sac-s1``)."""
    if agent_dir is None or Path(agent_dir).resolve() == Path(default_agent_dir(env_id, 0)).resolve():
        return None
    name = Path(agent_dir).resolve().name
    prefix = f"{env_id.lower()}-"
    tag = name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise ValueError(f"agent folder {agent_dir}: its name {name!r} cannot name a dataset (letters, digits, _ . -)")
    return tag


def pick_snapshots(snaps: list[Snapshot], quality: str) -> list[Snapshot]:
    """The snapshot(s) a quality is rolled from, in order."""
    if not snaps:
        raise ValueError("the behaviour agent has no snapshots yet")
    expert = max(snaps, key=lambda s: s.mean_return)
    if quality == "expert":
        return [expert]
    target = expert.mean_return / 3
    medium = min(snaps, key=lambda s: abs(s.mean_return - target))
    if quality == "medium":
        return [medium]
    return [s for s in snaps if s.step <= medium.step]


def rollout(env_id: str, policy, n_steps: int, seed: int, deterministic: bool = False,
            bar: tqdm | None = None) -> list[dict]:
    """Episodes (``Transitions.from_episodes`` layout) totalling ``n_steps`` steps; the last one
    is cut short (marked truncated) when the budget runs out. ``policy=None`` acts uniformly.
    ``bar``: a progress bar, moved by each episode's steps."""
    env = _check_env(env_id)
    env.action_space.seed(seed)
    episodes, steps, ep_i = [], 0, 0
    while steps < n_steps:
        obs, _ = env.reset(seed=seed + ep_i)
        ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            act = env.action_space.sample() if policy is None else actor_action(policy, obs, deterministic)
            obs, r, term, trunc, _ = env.step(act)
            steps += 1
            trunc = trunc or steps >= n_steps
            for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                            (obs, act, r, term, trunc)):
                ep[k].append(v)
            done = term or trunc
        if bar is not None:
            bar.update(len(ep["actions"]))
        episodes.append({k: np.asarray(v) for k, v in ep.items()})
        ep_i += 1
    env.close()
    return episodes


def generate_episodes(env_id: str, quality: str, agent_dir: str | Path, n_steps: int, seed: int = 0,
                      progress: bool = False) -> list[dict]:
    """The episodes of a ``quality`` dataset (:data:`QUALITIES`), ``n_steps`` transitions (for
    medium-replay, as many as the agent's buffer held up to medium); ``progress``: a bar over them."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    # the agent is read before the bar opens, so a missing one fails with its own line alone
    chosen = [] if quality == "random" else pick_snapshots(load_snapshots(agent_dir), quality)
    with tqdm(total=n_steps, disable=not progress, desc=f"{env_id} {quality}", unit="step") as bar:
        if quality == "random":
            return rollout(env_id, None, n_steps, seed, bar=bar)
        import json

        if quality != "medium-replay":
            return rollout(env_id, load_actor(agent_dir, chosen[0], env_id), n_steps, seed, bar=bar)
        cfg = json.loads((Path(agent_dir) / "config.json").read_text())
        bar.total = cfg["learning_starts"] + len(chosen) * cfg["snapshot_every"]
        bar.refresh()
        episodes = rollout(env_id, None, cfg["learning_starts"], seed, bar=bar)
        for i, snap in enumerate(chosen):
            episodes += rollout(env_id, load_actor(agent_dir, snap, env_id), cfg["snapshot_every"], seed + 1000 * (i + 1),
                                bar=bar)
        return episodes


def default_agent_dir(task: str, seed: int = 0) -> str:
    """Where ``cdp rl train-behaviour TASK`` keeps its agent: ``data/agents/<task>-sac-s<seed>``."""
    return f"data/agents/{task.lower()}-sac-s{seed}"


def make_dataset(env_id: str, quality: str, agent_dir: str | Path, n_steps: int = 200_000, seed: int = 0,
                 overwrite: bool = False, progress: bool = True) -> str:
    """Roll the episodes and record them as a Minari dataset in the local store; returns its id
    (:func:`dataset_id`, the agent named by :func:`agent_tag` unless it is the default one)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    did = dataset_id(env_id, quality, agent_tag(env_id, agent_dir) if quality != "random" else None)
    if did in minari.list_local_datasets():
        if not overwrite:
            held = minari.load_dataset(did).total_steps
            if quality != "medium-replay" and held != n_steps:  # medium-replay's size is the agent's, not --steps
                raise ValueError(f"Minari dataset {did} is in the local store with {held} transitions, not the "
                                 f"{n_steps} asked for: pass --overwrite to make it again")
            return did
        minari.delete_dataset(did)
    episodes = generate_episodes(env_id, quality, agent_dir, n_steps, seed, progress)
    buffers = [EpisodeBuffer(id=i, infos={}, observations=list(ep["observations"]), actions=list(ep["actions"]),
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"])) for i, ep in enumerate(episodes)]
    snaps = load_snapshots(agent_dir) if quality != "random" else []
    random_ret = evaluate_actor(None, env_id, episodes=20, seed=seed + 99)
    expert_ret = max(s.mean_return for s in snaps) if snaps else None
    env = _check_env(env_id)
    minari.create_dataset_from_buffers(
        did, buffers, env=env, eval_env=env.spec, algorithm_name=f"cdp behaviour SAC snapshots ({quality})",
        author="cdp", author_email="-", code_permalink="-",
        description=__doc__, ref_min_score=random_ret, ref_max_score=expert_ret,
    )
    return did


def make_task_dataset(task: str, quality: str, agent_dir: str | Path | None = None, n_steps: int = 200_000,
                      n_episodes: int | None = None, seed: int = 0, overwrite: bool = False,
                      progress: bool = True) -> str:
    """``cdp rl make-data``: the scripted kitchen datasets for ``task="kitchen"`` (``n_episodes``),
    otherwise the behaviour agent's (``n_steps``); returns the Minari id. One process at a time
    makes an id (a lock in the temporary folder): another waits, then finds it made and keeps it."""
    import tempfile

    from ..runlog import exclusive

    did = task_dataset_id(task, quality, agent_dir)
    with exclusive(Path(tempfile.gettempdir()) / f"cdp-make-{did.replace('/', '_')}.lock",
                   f"waiting for another process making {did}"):
        if task == "kitchen":
            from .kitchen import make_kitchen_dataset

            return make_kitchen_dataset(quality, n_episodes, seed, overwrite, progress=progress)
        return make_dataset(task, quality, agent_dir or default_agent_dir(task, 0), n_steps, seed, overwrite, progress)


def task_dataset_id(task: str, quality: str, agent_dir: str | Path | None = None) -> str:
    """The Minari id :func:`make_task_dataset` gives (``ValueError`` for an unknown quality)."""
    if task == "kitchen":
        from .kitchen import dataset_id as kitchen_id

        return kitchen_id(quality)
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES} for {task}, got {quality!r}")
    return dataset_id(task, quality, agent_tag(task, agent_dir) if quality != "random" else None)


@dataclass(frozen=True)
class DataRecipe:
    """How ``cdp rl make-data`` makes one of the datasets it names (:func:`recipe`)."""

    task: str  # Gymnasium id (``Walker2d-v5``) or ``kitchen``
    quality: str
    agent: str | None = None  # behaviour agent folder; None: the task's default one

    @property
    def command(self) -> str:
        return f"cdp rl make-data {self.task} {self.quality}" + (f" --agent {self.agent}" if self.agent else "")

    def make(self) -> str:
        """Make the dataset (kept if it is already in the local store); returns its id."""
        return make_task_dataset(self.task, self.quality, self.agent)


def recipe(did: str) -> DataRecipe | None:
    """The make-data call whose default settings make the Minari dataset ``did`` (the inverse of
    :func:`dataset_id`, and of kitchen's ids), or None where ``did`` is not a name it gives.
    ``cdp/walker2d/medium-replay-sac-s1-v0`` -> ``Walker2d-v5 medium-replay --agent
    data/agents/walker2d-v5-sac-s1``. An agent named in the id must be in its folder."""
    m = re.fullmatch(r"cdp/([a-z0-9]+)/([A-Za-z0-9_.-]+)-v0", did)
    if m is None:
        return None
    task, rest = m.groups()
    if task == "kitchen":
        from .kitchen import QUALITIES as KITCHEN_QUALITIES

        return DataRecipe("kitchen", rest) if rest in KITCHEN_QUALITIES else None
    import gymnasium as gym

    envs = sorted(k for k in gym.registry if k.split("-")[0].lower() == task and k.endswith("-v5"))
    quality = next((q for q in sorted(QUALITIES, key=len, reverse=True) if rest == q or rest.startswith(q + "-")), None)
    if not envs or quality is None:
        return None
    tag = rest[len(quality) + 1:] or None
    if tag is None:
        return DataRecipe(envs[0], quality)
    agent = Path(default_agent_dir(envs[0], 0)).parent / f"{envs[0].lower()}-{tag}"
    return DataRecipe(envs[0], quality, str(agent)) if (agent / "snapshots.json").is_file() else None
