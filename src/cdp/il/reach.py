"""MultiReach: a procedural multi-modal imitation task that needs no simulator.

A point mass in ``[-1, 1]^2`` must touch three goals (on a circle of radius 0.6 at 90°, 210° and
330°) within the horizon. Actions are accelerations in ``[-1, 1]^2``:
``v <- 0.8 v + 0.01 a``, ``p <- clip(p + v, -1, 1)`` (top speed 0.05 per step); a goal counts as
touched within 0.1. The demonstrator (a PD controller) visits the goals in an order it draws per
demonstration (6 orders) and bends each leg through a random via point, so at the start the
demonstrations split into three equally likely first goals and two ways round: a policy that
averages modes heads for the centre and fails. It succeeds in about 60 steps; the horizon is 120.

Observations, in robomimic's low-dim style: ``agent_pos`` (2), ``agent_vel`` (2),
``goals_touched`` (3, 0/1). The simulator state (for ``reset_to``) is those 7 numbers.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..data.robomimic import Demo, DemoDataset
from .demos import collect_demos, record_demo

def goal_positions(n: int) -> np.ndarray:
    """``n`` goals evenly spaced on the circle of radius 0.6, the first at 90°: ``[n, 2]``."""
    ang = np.deg2rad(90.0 + 360.0 * np.arange(n) / n)
    return 0.6 * np.stack([np.cos(ang), np.sin(ang)], 1)


def obs_shapes(n_goals: int = 3) -> dict[str, tuple[int, ...]]:
    return {"agent_pos": (2,), "agent_vel": (2,), "goals_touched": (n_goals,)}


GOALS = goal_positions(3)
RADIUS = 0.1
HORIZON = 120
OBS_SHAPES = obs_shapes(3)

# demonstrator profiles: (PD gains kp, kd; action noise std; share of steps paused)
OPERATORS = {"better": (10.0, 20.0, 0.05, 0.0), "okay": (6.0, 15.0, 0.3, 0.0), "worse": (4.0, 12.0, 0.5, 0.1)}


class MultiReach(gym.Env):
    """Gymnasium environment; ``reset(seed=i)`` gives the i-th fixed initial state."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = HORIZON, n_goals: int = 3, radius: float = RADIUS, noise: float = 0.0) -> None:
        if n_goals < 1 or radius <= 0 or noise < 0 or horizon < 1:
            raise ValueError("need n_goals >= 1, radius > 0, noise >= 0 and horizon >= 1")
        self.horizon, self.radius, self.noise = horizon, radius, noise
        self.goals = goal_positions(n_goals)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict({k: spaces.Box(-np.inf, np.inf, s, np.float32)
                                              for k, s in obs_shapes(n_goals).items()})
        self.state = np.zeros(4 + n_goals)
        self.order: list[int] = []  # goals in the order touched (for mode statistics)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.state = np.zeros_like(self.state)
        self.state[:2] = self.np_random.uniform(-0.15, 0.15, 2)
        self.order, self.t = [], 0
        return self._obs(), {}

    def get_state(self) -> np.ndarray:
        """The simulator state ``[x, y, vx, vy, touched per goal]`` (a copy), as ``reset_to`` takes it."""
        return self.state.copy()

    def reset_to(self, state: np.ndarray):
        self.state = np.asarray(state, dtype=np.float64).copy()
        self.order = [int(k) for k in np.flatnonzero(self.state[4:] > 0.5)]
        self.t = 0
        return self._obs()

    def step(self, action):  # type: ignore[override]
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        if not np.isfinite(a).all():
            raise ValueError(f"non-finite action {action}")
        p, v, touched = self.state[:2], self.state[2:4], self.state[4:].copy()
        v = 0.8 * v + 0.01 * a
        if self.noise:  # a push each step: the policy has to correct, open-loop replay drifts
            v = v + self.noise * self.np_random.normal(size=2)
        p = np.clip(p + v, -1.0, 1.0)
        for k in np.flatnonzero((np.linalg.norm(self.goals - p, axis=1) < self.radius) & (touched < 0.5)):
            touched[k] = 1.0
            self.order.append(int(k))
        self.state = np.concatenate([p, v, touched])
        self.t += 1
        success = bool(touched.all())
        return self._obs(), float(success), success, self.t >= self.horizon, {"success": success}

    def _obs(self) -> dict[str, np.ndarray]:
        s = self.state.astype(np.float32)
        return {"agent_pos": s[:2], "agent_vel": s[2:4], "goals_touched": s[4:]}


def demonstrate(env: MultiReach, rng: np.random.Generator, operator: str = "better", seed: int | None = None) -> Demo | None:
    """One scripted demonstration from ``env.reset(seed=seed)``; None if it does not succeed."""
    kp, kd, noise, pause = OPERATORS[operator]
    obs, _ = env.reset(seed=seed)
    n = len(env.goals)
    order = rng.permutation(n)
    leg, via = 0, _via(env.state[:2], env.goals[order[0]], rng)  # via point of the current leg; None once passed

    def act(_: dict) -> np.ndarray:
        # a PD controller towards the current goal, through a via point that bends each leg
        nonlocal leg, via
        p, v, touched = env.state[:2], env.state[2:4], env.state[4:]
        if touched[order[leg]] > 0.5:  # the last goal ends the episode, so some goal is left here
            while touched[order[leg]] > 0.5:
                leg += 1
            via = _via(p, env.goals[order[leg]], rng)
        if via is not None and np.linalg.norm(via - p) < 0.1:
            via = None
        target = env.goals[order[leg]] if via is None else via
        a = kp * (target - p) - kd * v + noise * rng.normal(size=2)
        if pause and rng.random() < pause:
            a = -kd * v  # hesitate: brake in place
        return np.clip(a, -1, 1)

    return record_demo(env, obs, act, list(env.observation_space.spaces))


def _via(p: np.ndarray, goal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A via point off the straight line from ``p`` to ``goal``, either side: the leg bends."""
    d = goal - p
    return p + 0.5 * d + rng.uniform(-0.35, 0.35) * np.array([-d[1], d[0]])


def make_demos(n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = False, keep=None,
               **env_kwargs) -> DemoDataset:
    """``n`` successful demonstrations (``ph``: the better operator; ``mh``: a third each of the
    better / okay / worse operators), see :func:`cdp.il.demos.collect_demos`. ``env_kwargs``:
    :class:`MultiReach`'s (goals, radius, horizon, noise)."""
    env = MultiReach(**env_kwargs)
    env_args = {"env_name": "MultiReach", "type": "cdp", "env_kwargs": {"horizon": env.horizon, **env_kwargs}}
    return collect_demos(env, demonstrate, list(OPERATORS), n, quality, seed, env_args, progress, "MultiReach demos",
                         keep=keep)
