"""robosuite's TwoArmTransport (two Panda arms facing each other, OSC delta pose at 20 Hz, 14
numbers per action, horizon 700 as robomimic's configs) behind Gymnasium's API, with low-dim
observations under robomimic's names, and a scripted two-arm demonstrator.

The task: arm 0 lifts the lid off the start bin and takes the hammer out; arm 1 moves the trash
cube from the target bin to the trash bin; arm 0 hands the hammer over above the middle of the
table, arm 1 takes it by the free end of its handle and drops it into the target bin. Success:
hammer in the target bin and trash in the trash bin.

Actions per arm: ``[dx, dy, dz, 0, 0, 0, grip]`` in that arm's base frame (robosuite's OSC input
frame), 0.05 m per unit, grip -1 open / +1 close. The demonstrator plans in the world frame and
turns each arm's world displacement into its base frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..data.robomimic import Demo, DemoDataset
from .demos import collect_demos, record_demo
from .robosuite_tasks import MODEL_SEED, OPERATORS, _reseed

OBS_SHAPES = {f"robot{i}_{k}": s for i in (0, 1) for k, s in (("eef_pos", (3,)), ("eef_quat", (4,)),
                                                               ("gripper_qpos", (2,)))} | {"object": (41,)}
HORIZON = 700
#: the task's stages (:meth:`TransportEnv.stages`): arm 0's two, arm 1's (done meanwhile), and
#: the end of the handover; robosuite's success is the last two at once
STAGES = ("lid off", "hammer lifted", "trash in its bin", "hammer in the target bin")
LID_MOVED = 0.15  # m, horizontally: half the bin's width, so the lid no longer covers the bin
HAMMER_LIFTED = 0.10  # m above where it lay
SAFE_Z = 1.12  # over the bins' walls
# world displacement -> each arm's OSC input (arm 0 faces +y, arm 1 faces -y)
TO_BASE = (np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))


class TransportEnv(gym.Env):
    """TwoArmTransport with robomimic's low-dim observation names; ``reset(seed=i)`` gives the
    i-th fixed initial state."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = HORIZON, model_seed: int = MODEL_SEED) -> None:
        import robosuite as suite
        from robosuite.controllers import load_composite_controller_config

        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        self.horizon, self.model_seed = horizon, model_seed
        self.env = suite.make("TwoArmTransport", robots=["Panda", "Panda"], env_configuration="opposed",
                              controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
                              has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
                              use_object_obs=True, control_freq=20, horizon=horizon, ignore_done=True,
                              hard_reset=False, reward_shaping=False, seed=model_seed)
        self.action_space = spaces.Box(-1.0, 1.0, (14,), np.float32)
        self.observation_space = spaces.Dict({k: spaces.Box(-np.inf, np.inf, s, np.float32) for k, s in OBS_SHAPES.items()})
        self.t = 0
        self.raw: dict = {}

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        if seed is not None:
            _reseed(self.env, np.random.default_rng(seed))
        self.t = 0
        self.raw = self.env.reset()
        tr = self.env.transport
        self._lid0, self._hammer0 = tr.lid_handle_pos.copy(), tr.payload_pos.copy()
        return self._obs(self.raw), {}

    def close(self) -> None:
        """Free the simulator now, not at collection."""
        self.env.close()

    def stages(self) -> np.ndarray:
        """Which of :data:`STAGES` hold now, ``[4]`` bool: the lid's handle more than
        ``LID_MOVED`` from where it started (horizontally), the hammer more than ``HAMMER_LIFTED``
        above where it lay, and robosuite's two contact checks (trash on the trash bin's floor,
        hammer on the target bin's floor). A partial-progress measure where success is rare."""
        tr = self.env.transport
        return np.array([np.linalg.norm(tr.lid_handle_pos[:2] - self._lid0[:2]) > LID_MOVED,
                         tr.payload_pos[2] - self._hammer0[2] > HAMMER_LIFTED,
                         bool(tr.trash_in_trash_bin), bool(tr.payload_in_target_bin)])

    def step(self, action):  # type: ignore[override]
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(14), -1.0, 1.0)
        self.raw, _, _, _ = self.env.step(a)
        self.t += 1
        success = bool(self.env._check_success())
        info = {"success": success, "stages": self.stages()}
        return self._obs(self.raw), float(success), success, self.t >= self.horizon, info

    def get_state(self) -> np.ndarray:
        return np.asarray(self.env.sim.get_state().flatten())

    @staticmethod
    def _obs(raw: dict) -> dict[str, np.ndarray]:
        out = {k: np.asarray(raw[k], dtype=np.float32) for k in OBS_SHAPES if k != "object"}
        out["object"] = np.asarray(raw["object-state"], dtype=np.float32)
        return out

    def env_args(self) -> dict:
        return {"env_name": "TwoArmTransport", "type": 1,
                "env_kwargs": {"robots": ["Panda", "Panda"], "env_configuration": "opposed", "control_freq": 20,
                               "controller": "BASIC (OSC_POSE arm)", "horizon": self.horizon,
                               "seed": self.model_seed}}


Target = Callable[[dict], np.ndarray]  # robosuite's raw observation -> a world position


@dataclass
class Step:
    """One phase of one arm: ``move`` to ``target`` (read when the phase starts) until within
    ``tol``; ``hold`` for ``steps``; or ``wait`` until ``until`` holds. ``grip``: +1 close."""

    kind: str
    grip: float
    target: Target | None = None
    tol: float = 0.01
    speed: float = 1.0
    steps: int = 0
    until: Callable[[dict], bool] | None = None


class _ArmPlan:
    def __init__(self, arm: int, plan: list[Step], gain: float, noise: float, cap: float, rng: np.random.Generator):
        self.arm, self.plan, self.gain, self.noise, self.cap, self.rng = arm, plan, gain, noise, cap, rng
        self.k, self.t, self.goal = 0, 0, None

    def done(self) -> bool:
        return self.k >= len(self.plan)

    def action(self, raw: dict) -> np.ndarray:
        eef = raw[f"robot{self.arm}_eef_pos"]
        out = np.zeros(7)
        if self.done():
            out[6] = -1.0
            return out
        st = self.plan[self.k]
        if self.t == 0:
            self.goal = st.target(raw) if st.kind == "move" else eef.copy()
        self.t += 1
        if st.kind == "move":
            finished = np.linalg.norm(self.goal - eef) < st.tol or self.t > 150
        elif st.kind == "hold":
            finished = self.t >= st.steps
        else:
            finished = bool(st.until(raw))
        lim = self.cap * st.speed
        world = np.clip(self.gain * (self.goal - eef) / 0.05 + self.noise * self.rng.normal(size=3), -lim, lim)
        out[:3] = TO_BASE[self.arm] @ world
        out[6] = st.grip
        if finished:
            self.k, self.t = self.k + 1, 0
        return out


def _over(target: Target) -> Target:
    return lambda raw: np.r_[target(raw)[:2], SAFE_Z]


def _reach(target: Target, grip: float, tol: float = 0.01, speed: float = 1.0) -> list[Step]:
    """Up to the safe height, across, then down to the target."""
    return [Step("move", grip, _over(target), 0.03), Step("move", grip, target, tol, speed)]


def _at(key: str, dz: float = 0.0) -> Target:
    return lambda raw: np.asarray(raw[key], dtype=np.float64) + [0.0, 0.0, dz]


def hammer_axis(quat: np.ndarray) -> np.ndarray:
    """The hammer's handle direction, pointing to its head, in the world: its local z axis (the
    head sits 0.117 m along it from the body's origin, the handle spans +-0.1 m), the third column
    of the rotation of ``quat = (x, y, z, w)`` (robosuite's order). robosuite places the head one
    way or the other at random."""
    x, y, z, w = (float(v) for v in quat)
    return np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])


def _on_handle(d: float, dz: float = 0.0) -> Target:
    """The point ``d`` metres along the handle from the hammer's origin (towards the head when
    ``d > 0``), raised by ``dz``: follows the hammer however it turned in a grasp."""
    return lambda raw: raw["payload_pos"] + d * hammer_axis(raw["payload_quat"]) + [0.0, 0.0, dz]


def demonstrate_transport(env: TransportEnv, rng: np.random.Generator, operator: str = "better",
                          seed: int | None = None) -> Demo | None:
    """One scripted Transport demonstration from ``env.reset(seed=seed)``; None if it fails."""
    obs, _ = env.reset(seed=seed)
    gain, noise, cap = OPERATORS[operator]
    # where each arm takes the handle, in metres along it from the hammer's origin (+ towards the
    # head; arm 0 works from the -y side, arm 1 from the +y side, so neither reaches across the
    # other). Head towards arm 0: arm 0 next to the head, arm 1 the free end; head towards arm 1:
    # arm 0 the free end, arm 1 next to the head. Grasps follow the handle however it turned.
    axis_y = hammer_axis(env.raw["payload_quat"])[1]  # < 0: the head faces arm 0
    d0, d1 = (0.06, -0.04) if axis_y < 0 else (-0.05, 0.06)
    d0, d1 = d0 + rng.uniform(-0.01, 0.01), d1 + rng.uniform(-0.01, 0.01)
    g0 = d0 * axis_y  # arm 0's grasp from the origin, world y
    # the handover point sits between the arms, at the height of their bases' reach
    handover = np.array([rng.uniform(-0.03, 0.03), 0.0, 1.05])
    lid_spot = np.array([0.2, -0.2, 1.05]) + [rng.uniform(-0.03, 0.03), 0, 0]
    taken = {"arm1": False}

    def mark(raw: dict) -> bool:
        taken["arm1"] = True
        return True

    arm0 = [*_reach(_at("lid_handle_pos", 0.08), -1),
            Step("move", -1, _at("lid_handle_pos", -0.005), 0.008, 0.6),
            Step("hold", 1, steps=10),
            Step("move", 1, _at("lid_handle_pos", 0.2), 0.02, 0.6),
            *_reach(lambda raw: lid_spot, 1, 0.02, 0.8),
            Step("hold", -1, steps=8),
            *_reach(_on_handle(d0, 0.1), -1),
            Step("move", -1, _on_handle(d0), 0.008, 0.6),
            Step("hold", 1, steps=10),
            Step("move", 1, _on_handle(d0, 0.2), 0.02, 0.6),
            Step("move", 1, lambda raw: handover + [0, g0, 0], 0.01, 0.6),
            Step("wait", 1, until=lambda raw: taken["arm1"]),
            Step("hold", -1, steps=10),
            Step("move", -1, lambda raw: np.array([0.0, -0.4, 1.1]), 0.03)]
    arm1 = [*_reach(_at("trash_pos", 0.08), -1),
            Step("move", -1, _at("trash_pos", -0.005), 0.008, 0.6),
            Step("hold", 1, steps=10),
            Step("move", 1, _at("trash_pos", 0.15), 0.02, 0.6),
            *_reach(_at("trash_bin_pos", 0.2), 1, 0.02, 0.8),
            Step("hold", -1, steps=8),
            Step("move", -1, lambda raw: np.array([0.0, 0.35, 1.15]), 0.03),
            Step("wait", -1, until=lambda raw: np.linalg.norm(raw["payload_pos"] - handover) < 0.05),
            Step("move", -1, _on_handle(d1, 0.1), 0.01, 0.8),
            Step("move", -1, _on_handle(d1), 0.008, 0.5),
            Step("hold", 1, steps=10),
            Step("wait", 1, until=mark),
            Step("hold", 1, steps=12),
            Step("move", 1, _on_handle(d1, 0.1), 0.02, 0.3),  # slowly: the head hangs off the grasp
            Step("move", 1, _over(_at("target_bin_pos")), 0.03, 0.3),
            Step("move", 1, _at("target_bin_pos", 0.25), 0.02, 0.3),
            Step("hold", -1, steps=15)]
    plans = [_ArmPlan(0, arm0, gain, noise, cap, rng), _ArmPlan(1, arm1, gain, noise, cap, rng)]
    return record_demo(env, obs, lambda obs: np.concatenate([p.action(env.raw) for p in plans]), list(OBS_SHAPES),
                       finished=lambda: all(p.done() for p in plans))


def make_transport_demos(n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = True,
                         keep=None) -> DemoDataset:
    """``n`` successful scripted Transport demonstrations (failed attempts are discarded), see
    :func:`cdp.il.demos.collect_demos`."""
    env = TransportEnv()
    return collect_demos(env, demonstrate_transport, list(OPERATORS), n, quality, seed, env.env_args(), progress,
                         f"Transport {quality} demos", keep=keep)
