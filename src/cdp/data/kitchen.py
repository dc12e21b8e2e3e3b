"""Franka Kitchen: the kitchen-complete task, a scripted demonstrator, D4RL-shaped datasets
recorded in Minari's kitchen layout, and D4RL's kitchen score.

The environment is Gymnasium-Robotics' ``FrankaKitchen-v1`` (the one Minari's
``D4RL/kitchen/*-v2`` datasets are recorded in). Its observation is a dict; the agents here see
the flat ``observation`` entry (59 numbers: the arm's joint positions and velocities, the
objects' positions and velocities). ``cdp/kitchen-complete-v0`` is that environment with the four
kitchen-complete subtasks (microwave, kettle, light switch, slide cabinet), D4RL's 280-step
horizon, and the flat observation.

The demonstrator drives the arm's end-effector site through waypoints read from the simulator
(handles and switch positions at reset) with damped least-squares inverse kinematics on the
site's Jacobian; the environment's action is a joint velocity, so one step's action is the joint
displacement asked for divided by the step's largest displacement. Each subtask is a skill: a
generator of actions that reads the simulator after every step (closed loop).

Reward is the number of subtasks completed at that step (a completed task leaves the list), so
an episode's return is the number of subtasks done, 0-4; D4RL normalises it against 0 and 4.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

COMPLETE = ("microwave", "kettle", "light switch", "slide cabinet")
PARTIAL = ("microwave", "kettle", "bottom burner", "light switch")  # D4RL's kitchen-partial / -mixed target
HORIZON = 280  # D4RL's kitchen episode length
ENV_ID = "cdp/kitchen-complete-v0"
ENV_IDS = {ENV_ID: COMPLETE, "cdp/kitchen-partial-v0": PARTIAL}
QUALITIES = ("complete", "partial", "mixed")
EPISODES = {"complete": 19, "partial": 200, "mixed": 200}  # D4RL's kitchen-complete has 19 demonstrations
# the environment turns an action a in [-1, 1] into a joint target q + 2 a dt, dt = 0.08 s
_MAX_JOINT_STEP = 0.16
UP = np.array([0.0, 0.0, 1.0])
FORWARD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # gripper pointing +y, fingers along x


def _pitched(angle: float) -> np.ndarray:
    """Gripper turned so its fingers close across a bar along x, pointing ``angle`` rad up from
    straight down (toward +y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.column_stack([[-1.0, 0.0, 0.0], [0.0, c, s], [0.0, s, -c]])


def _rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_kitchen(tasks: Sequence[str] = COMPLETE, max_episode_steps: int = HORIZON, flat: bool = True, **kwargs):
    """``FrankaKitchen-v1`` with these subtasks; ``flat`` exposes only the ``observation`` entry."""
    import gymnasium as gym
    import gymnasium_robotics  # noqa: F401  (registers FrankaKitchen-v1)

    gym.register_envs(gymnasium_robotics)
    env = gym.make("FrankaKitchen-v1", tasks_to_complete=list(tasks), max_episode_steps=max_episode_steps,
                   disable_env_checker=True, **kwargs)
    if not flat:
        return env
    space = env.observation_space["observation"]
    box = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
    return gym.wrappers.TransformObservation(env, lambda o: np.asarray(o["observation"], dtype=np.float32), box)


def register() -> None:
    """Register ``cdp/kitchen-complete-v0`` and ``cdp/kitchen-partial-v0`` (flat observations,
    280 steps) with Gymnasium; idempotent."""
    import gymnasium as gym

    for env_id, tasks in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=make_kitchen, kwargs={"tasks": tasks}, max_episode_steps=HORIZON,
                         disable_env_checker=True)


def env_for_tasks(tasks: Sequence[str]) -> str:
    """The flat registered id for a kitchen dataset's target subtasks (a Minari env spec's
    ``tasks_to_complete``)."""
    for env_id, known in ENV_IDS.items():
        if set(tasks) == set(known):
            return env_id
    raise ValueError(f"no flat kitchen environment for subtasks {list(tasks)}; known: "
                     + "; ".join(f"{k}: {list(v)}" for k, v in ENV_IDS.items()))


def task_done(data, task: str, margin: float = 0.0) -> bool:
    """Whether a subtask's joints are within the environment's 0.3 threshold of its goal, less
    ``margin`` (a skill goes on past the threshold, so the door or lever does not settle back
    just outside it)."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import BONUS_THRESH, OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    return bool(np.linalg.norm(data.qpos[OBS_ELEMENT_INDICES[task]] - OBS_ELEMENT_GOALS[task]) < BONUS_THRESH - margin)


class Arm:
    """Damped least-squares inverse kinematics for the end-effector site of the kitchen's arm."""

    def __init__(self, env, damping: float = 0.01, gain: float = 2.0):
        self.model, self.data = env.unwrapped.model, env.unwrapped.data
        self.gain = gain  # the position servos cover only part of a step's target
        self.rest = self.data.qpos[:7].copy()  # the posture at construction (after reset)
        self.limits = env.unwrapped.robot_env.robot_pos_bound[:7] + [[0.02, -0.02]]  # 0.02 rad off each limit
        self.site = self.model.site("end_effector").id
        self.damping = damping
        self._jp = np.zeros((3, self.model.nv))
        self._jr = np.zeros((3, self.model.nv))

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) in m and rotation matrix (3, 3), world frame."""
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site_xpos[self.model.site(name).id].copy()

    def action(self, target: np.ndarray, rot: np.ndarray, grip: float, vmax: float = 0.08,
               free_axis: np.ndarray | None = None) -> np.ndarray:
        """The (9,) action moving the site toward ``target`` (at most ``vmax`` m this step) and
        ``rot`` (turning about the world ``free_axis`` left free); ``grip`` +1 opens the fingers,
        -1 closes them."""
        import mujoco

        pos, cur = self.pose()
        dp = self.gain * (target - pos)
        n = np.linalg.norm(dp)
        if n > vmax:
            dp *= vmax / n
        err = rot @ cur.T  # rotation still to go, as a small-angle axis vector
        dw = 0.5 * self.gain * np.array([err[2, 1] - err[1, 2], err[0, 2] - err[2, 0], err[1, 0] - err[0, 1]])
        mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
        jr = self._jr[:, :7]
        if free_axis is not None:
            keep = np.eye(3) - np.outer(free_axis, free_axis)
            jr, dw = keep @ jr, keep @ dw
        jac = np.vstack([self._jp[:, :7], jr])
        err6, q = np.concatenate([dp, dw]), self.data.qpos[:7]
        free = np.ones(7, dtype=bool)
        for _ in range(3):  # a joint the step would push past its limit is left out and the rest re-solved
            j = jac[:, free]
            dq = np.zeros(7)
            dq[free] = j.T @ np.linalg.solve(j @ j.T + self.damping * np.eye(6), err6)
            blocked = free & (((q + dq > self.limits[:, 1]) & (dq > 0)) | ((q + dq < self.limits[:, 0]) & (dq < 0)))
            if not blocked.any():
                break
            free &= ~blocked
        act = np.empty(9)
        act[:7] = np.clip(dq / _MAX_JOINT_STEP, -1.0, 1.0)
        act[7:] = grip
        return act

    def move(self, target, rot, grip: float, tol: float, cap: int, vmax: float = 0.08,
             free_axis: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Actions toward ``target`` until within ``tol`` m or ``cap`` steps."""
        for _ in range(cap):
            if np.linalg.norm(self.pose()[0] - target) < tol:
                return
            yield self.action(target, rot, grip, vmax, free_axis)

    def home(self, grip: float, tol: float = 0.05, cap: int = 12) -> Iterator[np.ndarray]:
        """Joint-space moves back to the reset posture (a Cartesian move between far-apart
        orientations can end against a joint limit)."""
        for _ in range(cap):
            err = self.rest - self.data.qpos[:7]
            if np.abs(err).max() < tol:
                return
            act = np.empty(9)
            act[:7] = np.clip(self.gain * err / _MAX_JOINT_STEP, -1.0, 1.0)
            act[7:] = grip
            yield act

    def hold(self, grip: float, steps: int, free_axis: np.ndarray | None = None) -> Iterator[np.ndarray]:
        pos, rot = self.pose()
        for _ in range(steps):
            yield self.action(pos, rot, grip, free_axis=free_axis)


def _microwave(arm: Arm, rng: np.random.Generator, jitter: float) -> Iterator[np.ndarray]:
    handle = arm.site_pos("microhandle_site") + rng.normal(0, jitter / 3, 3)  # the fingers clear the bar by ~2 cm
    hinge = arm.data.xpos[arm.model.body("microdoorroot").id].copy()
    yield from arm.move(handle + [0, -0.12, 0], FORWARD, 1, 0.02, 30)
    yield from arm.move(handle, FORWARD, 1, 0.015, 15)
    yield from arm.hold(-1, 4)
    # pull the handle round the hinge, turning the gripper with the door (which lags the hand)
    for theta in np.linspace(0, -1.5, 36)[1:]:
        if task_done(arm.data, "microwave", margin=0.1):
            break
        yield arm.action(hinge + _rot_z(theta) @ (handle - hinge), _rot_z(theta) @ FORWARD, -1, free_axis=UP)
    yield from arm.hold(1, 3, free_axis=UP)
    pos, rot = arm.pose()
    yield from arm.move(pos + [0, -0.1, 0.15], rot, 1, 0.03, 8, free_axis=UP)  # up and out, clear of the kettle


def _kettle(arm: Arm, rng: np.random.Generator, jitter: float) -> Iterator[np.ndarray]:
    rot, bar = _pitched(1.3), np.array([1.0, 0.0, 0.0])  # the grasp may turn about the handle's bar
    handle = arm.site_pos("kettle_site") + rng.normal(0, jitter / 3, 3)  # the grasp leaves ~1.6 cm each side
    shift = np.array([0.04, 0.4, 0.0]) + rng.normal(0, jitter, 3) * [1, 1, 0]  # bottom-left to top-left burner
    yield from arm.move(handle - 0.12 * rot[:, 2] + [0, 0, 0.15], rot, 1, 0.06, 18)  # come in from above
    yield from arm.move(handle - 0.12 * rot[:, 2], rot, 1, 0.015, 20)
    yield from arm.move(handle, rot, 1, 0.01, 20, free_axis=bar)
    yield from arm.hold(-1, 5, free_axis=bar)
    yield from arm.move(handle + [0, 0, 0.1], rot, -1, 0.015, 20, free_axis=bar)
    for s in np.linspace(0, 1, 25)[1:]:
        yield arm.action(handle + s * shift + [0, 0, 0.1], rot, -1, vmax=0.03, free_axis=bar)
    yield from arm.move(handle + shift + [0, 0, 0.01], rot, -1, 0.015, 5, free_axis=bar)
    yield from arm.hold(1, 4, free_axis=bar)
    yield from arm.move(handle + shift - 0.1 * rot[:, 2] + [0, 0, 0.05], rot, 1, 0.03, 10, free_axis=bar)


def _light_switch(arm: Arm, rng: np.random.Generator, jitter: float) -> Iterator[np.ndarray]:
    lever = arm.site_pos("light_site") + [0, 0, 0.015] + rng.normal(0, jitter / 2, 3)
    yield from arm.home(-1)
    for _ in range(2):  # a push that slid past the lever's tip is tried once more
        yield from arm.move(lever + [0.06, -0.1, 0], FORWARD, -1, 0.02, 30)
        yield from arm.move(lever + [0.06, 0, 0], FORWARD, -1, 0.015, 12)
        for _ in range(20):  # push the lever's tip toward -x
            if task_done(arm.data, "light switch", margin=0.1):
                break
            yield arm.action(lever + [-0.2, 0, 0], FORWARD, -1, vmax=0.03)
        yield from arm.move(arm.pose()[0] + [0, -0.08, 0], FORWARD, -1, 0.02, 6)
        if task_done(arm.data, "light switch"):
            return


def _slide_cabinet(arm: Arm, rng: np.random.Generator, jitter: float) -> Iterator[np.ndarray]:
    handle = arm.site_pos("slide_site") + rng.normal(0, jitter / 2, 3)
    for _ in range(2):
        start = arm.data.qpos[arm.model.joint("slide_cabinet").qposadr[0]]
        yield from arm.move(handle + [start - 0.06, -0.12, 0], FORWARD, -1, 0.02, 30)
        yield from arm.move(handle + [start - 0.06, 0, 0], FORWARD, -1, 0.015, 15)
        for _ in range(25):
            if task_done(arm.data, "slide cabinet", margin=0.1):
                break
            yield arm.action(handle + [0.3, 0, 0], FORWARD, -1, vmax=0.03)
        yield from arm.move(arm.pose()[0] + [0, -0.08, 0], FORWARD, -1, 0.02, 6)
        if task_done(arm.data, "slide cabinet"):
            return


SKILLS = {"microwave": _microwave, "kettle": _kettle, "light switch": _light_switch, "slide cabinet": _slide_cabinet}


@dataclass(frozen=True)
class DemoConfig:
    """How varied the scripted demonstrations are."""

    jitter: float = 0.01  # m, std of the per-episode offset of each skill's waypoints
    action_noise: float = 0.05  # std of Gaussian noise on every action (then clipped to [-1, 1])


def demonstrate(env, sequence: Sequence[str], seed: int, config: DemoConfig = DemoConfig()) -> dict:
    """One episode of the skills in ``sequence`` on ``env`` (a dict-observation kitchen, reset
    here with ``seed``), then idle until the horizon or termination. Returns the episode in
    :meth:`Transitions.from_episodes`' layout (observations are the env's dicts, one more than
    actions) with ``completed``, the subtasks the environment counted, in order."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    arm = Arm(env)
    ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    completed: list[str] = []

    def actions() -> Iterator[np.ndarray]:
        for task in sequence:
            if task not in SKILLS:
                raise ValueError(f"no scripted skill for kitchen subtask {task!r}; known: {sorted(SKILLS)}")
            yield from SKILLS[task](arm, rng, config.jitter)
        while True:
            yield from arm.hold(1, 1)

    for act in actions():
        act = np.clip(act + rng.normal(0, config.action_noise, act.shape), -1, 1)
        obs, r, term, trunc, info = env.step(act)
        completed += [t for t in info["step_task_completions"] if t not in completed]
        for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"), (obs, act, r, term, trunc)):
            ep[k].append(v)
        if term or trunc:
            break
    ep["completed"] = completed
    return ep


def episode_sequences(quality: str, n_episodes: int, seed: int) -> list[tuple[str, ...]]:
    """What each episode of a dataset does, in the spirit of D4RL's three kitchen datasets:

    - ``complete``: all four subtasks in order, every episode;
    - ``partial``: a quarter of the episodes do all four in order, the rest a random one to
      three of them (in order);
    - ``mixed``: a random one to three of them in order, never all four.
    """
    if quality not in QUALITIES:
        raise ValueError(f"kitchen quality must be one of {QUALITIES}, got {quality!r}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_episodes):
        if quality == "complete" or (quality == "partial" and i % 4 == 0):
            out.append(COMPLETE)
            continue
        k = int(rng.integers(1, 4))
        keep = np.sort(rng.choice(4, size=k, replace=False))
        out.append(tuple(COMPLETE[j] for j in keep))
    return out


def _tree(items: list):
    """A list of (nested) dict observations as the same dicts of lists (Minari's buffer layout)."""
    if isinstance(items[0], dict):
        return {k: _tree([x[k] for x in items]) for k in items[0]}
    return [np.asarray(x) for x in items]


def dataset_id(quality: str) -> str:
    return f"cdp/kitchen/{quality}-v0"


def generate_kitchen_episodes(quality: str, n_episodes: int | None = None, seed: int = 0,
                              config: DemoConfig = DemoConfig(), progress: bool = True,
                              max_attempts: int | None = None) -> tuple[list[dict], dict]:
    """Scripted kitchen episodes for a quality, and what it took: ``{"attempts", "kept",
    "success_rate"}``. ``complete`` keeps only episodes that finished all four subtasks (as
    D4RL's complete demonstrations do) and tries at most ``max_attempts`` (default 5 n)
    episodes; ``partial`` and ``mixed`` keep every episode."""
    from tqdm import tqdm

    if quality not in QUALITIES:
        raise ValueError(f"kitchen quality must be one of {QUALITIES}, got {quality!r}")
    n = EPISODES[quality] if n_episodes is None else n_episodes
    if n < 1:
        raise ValueError(f"n_episodes must be positive, got {n}")
    env = make_kitchen(COMPLETE, flat=False)
    plans = episode_sequences(quality, n, seed)
    attempts = max_attempts or 5 * n
    episodes, tried, full = [], 0, 0
    with tqdm(total=n, desc=f"kitchen {quality}", unit="ep", disable=not progress) as bar:
        while len(episodes) < n and tried < attempts:
            ep = demonstrate(env, plans[len(episodes)], seed=seed + tried, config=config)
            tried += 1
            full += len(ep["completed"]) == len(COMPLETE)
            if quality != "complete" or len(ep["completed"]) == len(COMPLETE):
                episodes.append(ep)
                bar.update(1)
    env.close()
    if len(episodes) < n:
        raise RuntimeError(f"the kitchen demonstrator completed all four subtasks in {full} of {tried} episodes; "
                           f"{n} were asked for")
    return episodes, {"attempts": tried, "kept": len(episodes), "success_rate": full / tried}


def make_kitchen_dataset(quality: str, n_episodes: int | None = None, seed: int = 0, overwrite: bool = False,
                         config: DemoConfig = DemoConfig(), progress: bool = True) -> str:
    """Record scripted kitchen episodes as a Minari dataset in Minari's kitchen layout (dict
    observations, ``FrankaKitchen-v1`` with the kitchen-complete subtasks, D4RL's 0-4
    reference); returns its id, ``cdp/kitchen/<quality>-v0``."""
    import minari
    from minari.data_collector import EpisodeBuffer

    did = dataset_id(quality)
    if did in minari.list_local_datasets():
        if not overwrite:
            return did
        minari.delete_dataset(did)
    episodes, stats = generate_kitchen_episodes(quality, n_episodes, seed, config, progress)
    buffers = [EpisodeBuffer(id=i, infos={}, observations=_tree(ep["observations"]), actions=list(ep["actions"]),
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"])) for i, ep in enumerate(episodes)]
    env = make_kitchen(COMPLETE, flat=False)
    minari.create_dataset_from_buffers(
        did, buffers, env=env, eval_env=env.spec, algorithm_name=f"cdp scripted kitchen demonstrator ({quality}; "
        f"{stats['kept']} kept of {stats['attempts']} tried, all four subtasks in {stats['success_rate']:.0%})",
        author="cdp", author_email="-", code_permalink="-", description=__doc__, ref_min_score=0.0, ref_max_score=4.0,
    )
    env.close()
    return did
