"""robosuite 1.5 manipulation tasks (Panda, OSC delta-pose at 20 Hz, low-dim observations under
robomimic's names) wrapped as Gymnasium environments, with scripted demonstrators.

Observations: ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4), ``robot0_gripper_qpos`` (2) and
``object`` (robosuite's ``object-state``: Lift 10, Can 14); with ``cameras``, also
``<camera>_image`` (``[H, W, 3]`` uint8, upright), rendered offscreen by MuJoCo (OSMesa on a
machine without a GPU: ``apt-get install libosmesa6``; ``MUJOCO_GL`` is set to ``osmesa`` when
that library is present and nothing else was chosen). Actions: 7 numbers in ``[-1, 1]``,
end-effector translation (0.05 m per unit), rotation (kept 0 by the demonstrators) and the
gripper (-1 open, +1 close). ``reset(seed=i)`` gives the i-th fixed initial state; an episode ends
on success or at the horizon (robomimic's 400 steps for PH Lift / Can).

The scripted demonstrators differ between demonstrations the way people do: which side they come
from, how high they hover, how long they squeeze, how fast and how noisily they move.
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import os
import threading
import weakref
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..data.robomimic import Demo, DemoDataset
from ..options import CAMERA_RENDERS
from .demos import collect_demos, record_demo

OBS_SHAPES = {"Lift": {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,), "object": (10,)},
              "PickPlaceCan": {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,),
                               "object": (14,)}}
HORIZON = 400
CAMERAS = ("agentview", "robot0_eye_in_hand")  # robomimic's image datasets: shoulder and wrist
IMAGE_SIZE = 84


def image_shapes(cameras: tuple[str, ...] = CAMERAS, size: int = IMAGE_SIZE) -> dict[str, tuple[int, ...]]:
    return {f"{c}_image": (size, size, 3) for c in cameras}


def _configure_gl() -> None:
    """Offscreen rendering without a display: OSMesa where it is installed. robosuite reads
    ``MUJOCO_GL`` once, when it is first imported."""
    if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


_configure_gl()  # before anything imports robosuite (only this module does, lazily)


def rendering_available() -> bool:
    """Whether robosuite can render cameras here (a GL backend chosen before robosuite loaded)."""
    return os.environ.get("MUJOCO_GL") in ("osmesa", "egl")

#: robosuite draws a model's randomised sizes (Lift's cube side, 0.020-0.022 m) once, when the
#: environment is built, from the generator its ``seed`` makes; unseeded, every process would
#: build a slightly different task, and neither demonstrations nor evaluations would repeat
MODEL_SEED = 0

# operators: (position gain, action noise std, speed cap)
OPERATORS = {"better": (10.0, 0.05, 1.0), "okay": (6.0, 0.15, 0.7), "worse": (4.0, 0.3, 0.5)}


class RobosuiteEnv(gym.Env):
    """A robosuite task behind Gymnasium's API, observations renamed as robomimic names them.
    ``render_cameras``: whether the next ``step`` draws the cameras (``reset`` always does and sets
    it true); false repeats the last images, for a caller that will not read them."""

    metadata = {"render_modes": []}

    def __init__(self, env_name: str = "Lift", horizon: int = HORIZON, cameras: tuple[str, ...] = (),
                 image_size: int = IMAGE_SIZE, model_seed: int = MODEL_SEED, camera_render: str = "fast") -> None:
        if camera_render not in CAMERA_RENDERS:
            raise ValueError(f"camera_render must be one of {CAMERA_RENDERS}, got {camera_render!r}")
        if cameras:
            if not rendering_available():
                raise ValueError("camera observations need offscreen rendering: install OSMesa (apt-get install "
                                 "libosmesa6) or set MUJOCO_GL=egl on a GPU machine, before robosuite is imported")
        import robosuite as suite
        from robosuite import macros
        from robosuite.controllers import load_composite_controller_config

        macros.IMAGE_CONVENTION = "opencv"  # upright images (robosuite's default is OpenGL's, upside down)
        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        if env_name not in OBS_SHAPES:
            raise ValueError(f"unknown robosuite task {env_name!r}; choose from {sorted(OBS_SHAPES)}")
        self.env_name, self.horizon, self.cameras, self.model_seed = env_name, horizon, tuple(cameras), model_seed
        self.camera_render = camera_render
        cam = dict(has_offscreen_renderer=True, use_camera_obs=True, camera_names=list(cameras),
                   camera_heights=image_size, camera_widths=image_size) if cameras else \
            dict(has_offscreen_renderer=False, use_camera_obs=False)
        self.env = suite.make(env_name, robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC", robot="Panda"),
                              has_renderer=False, use_object_obs=True, control_freq=20, horizon=horizon,
                              ignore_done=True, hard_reset=False, reward_shaping=False, seed=model_seed, **cam)
        # robosuite makes a context current only when it creates one, so with several camera
        # environments in a process each would draw in the last one made: each step makes its own current
        self._gl = None
        if cameras:
            self._gl = _freed_in_own_context(self.env.sim._render_context_offscreen)
            self._gl.make_current()  # now tracked, and _render_fast remakes MuJoCo's context in it
            if camera_render == "fast":
                _render_fast(self.env, image_size)
        self.render_cameras = True
        for c in self.cameras:
            _skippable(self, f"{c}_image")
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        boxes = {k: spaces.Box(-np.inf, np.inf, s, np.float32) for k, s in OBS_SHAPES[env_name].items()}
        boxes |= {k: spaces.Box(0, 255, s, np.uint8) for k, s in image_shapes(self.cameras, image_size).items()}
        self.observation_space = spaces.Dict(boxes)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        if seed is not None:  # robosuite draws the initial state from env.rng and its placement samplers'
            _reseed(self.env, np.random.default_rng(seed))
        if self._gl is not None:
            self._gl.make_current()
        self.t = 0
        self.render_cameras = True
        return self._obs(self.env.reset()), {}

    def step(self, action):  # type: ignore[override]
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        if self._gl is not None:
            self._gl.make_current()
        raw, _, _, _ = self.env.step(a)
        self.t += 1
        success = bool(self.env._check_success())
        return self._obs(raw), float(success), success, self.t >= self.horizon, {"success": success}

    def close(self) -> None:
        """Free the simulator and its renderer now (each in its own GL context), not at collection."""
        self.env.close()
        self._gl = None

    def object_pos(self) -> np.ndarray:
        """World position of the task's object (the cube, the can), from the simulator."""
        e = self.env
        body = e.cube_body_id if self.env_name == "Lift" else e.obj_body_id["Can"]
        return np.array(e.sim.data.body_xpos[body], dtype=np.float64)

    def get_state(self) -> np.ndarray:
        return np.asarray(self.env.sim.get_state().flatten())

    def _obs(self, raw: dict) -> dict[str, np.ndarray]:
        out = {k: np.asarray(raw[k], dtype=np.float32) for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")}
        out["object"] = np.asarray(raw["object-state"], dtype=np.float32)
        for c in self.cameras:
            out[f"{c}_image"] = np.ascontiguousarray(raw[f"{c}_image"], dtype=np.uint8)
        return out

    def env_args(self) -> dict:
        kw = {"robots": ["Panda"], "control_freq": 20, "controller": "BASIC (OSC_POSE arm)", "horizon": self.horizon,
              "seed": self.model_seed}
        if self.cameras:
            kw |= {"camera_names": list(self.cameras), "use_camera_obs": True, "camera_render": self.camera_render}
        return {"env_name": self.env_name, "type": 1, "env_kwargs": kw}


def _skippable(env: RobosuiteEnv, name: str) -> None:
    """Wrap the camera observable ``name``'s sensor so that a step with ``env.render_cameras``
    false returns the last image instead of drawing one. The wrapper is called where robosuite
    calls the sensor, so a drawn image is the one robosuite would have drawn; a policy that reads
    observations only around its decisions skips the rest (``ChunkPolicy.reads_next_observation``)."""
    from robosuite.utils.observables import sensor

    observable = env.env._observables[name]
    draw, last = observable._sensor, {}

    @sensor(modality=observable.modality)
    def camera(obs_cache):
        if env.render_cameras or name not in last:
            last[name] = draw(obs_cache)
        return last[name]

    env.env.modify_observable(name, "sensor", camera)


#: the GL context each thread made current last, of those :func:`_freed_in_own_context` tracks
#: (which context is current is GL's own per-thread state; this mirrors it for those contexts)
_CURRENT_GL = threading.local()


class _TrackedGL:
    """Mixed into robosuite's GL context: remembers being made current, and leaves its freeing
    to its renderer (a collection calls the finalizers of a dead cycle in no set order)."""

    def make_current(self) -> None:
        super().make_current()  # type: ignore[misc]
        _CURRENT_GL.last = weakref.ref(self)

    def __del__(self) -> None:
        pass


class _OwnContextRenderer:
    """Mixed into robosuite's offscreen renderer: frees MuJoCo's render context in its own GL
    context, then that context, then makes current again the context that was. robosuite frees it
    in whichever context is current; GL names its objects per context from 1, so a renderer
    collected while another environment draws deleted that one's framebuffer and textures
    (its images then came back as whatever memory held)."""

    def __del__(self) -> None:
        gl = self.gl_ctx  # type: ignore[attr-defined]
        last = getattr(_CURRENT_GL, "last", None)
        before = last() if last is not None else None
        gl.make_current()
        self.con.free()  # type: ignore[attr-defined]
        try:
            gl.free()
        except Exception:  # an EGL error while the interpreter exits: robosuite's own finaliser hides it too
            pass
        if before is not None and before is not gl:
            before.make_current()


@functools.cache
def _mixed(mixin: type, base: type) -> type:
    return type(base.__name__, (mixin, base), {})


def _freed_in_own_context(renderer):
    """Give robosuite's offscreen ``renderer`` (and its GL context, returned) the behaviour of
    :class:`_OwnContextRenderer` and :class:`_TrackedGL`."""
    renderer.__class__ = _mixed(_OwnContextRenderer, type(renderer))
    renderer.gl_ctx.__class__ = _mixed(_TrackedGL, type(renderer.gl_ctx))
    return renderer.gl_ctx


def _render_fast(env, size: int) -> None:
    """Camera views drawn once each, without multisampling or the reflection (``CAMERA_RENDERS``):
    the offscreen buffer made again at the cameras' size with no samples (robosuite's public
    resize remakes MuJoCo's render context, which reads the sample count from the model)."""
    import mujoco

    ctx = env.sim._render_context_offscreen
    env.sim.model._model.vis.quality.offsamples = 0
    ctx.update_offscreen_size(size, size)
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


def _reseed(env, rng: np.random.Generator) -> None:
    """Point every generator a robosuite reset draws from at ``rng``: the environment's (the
    robot's initial joints), its placement samplers' and their objects' (Transport's hammer draws
    which way its head faces at each placement from its own). Otherwise an object's draws would
    depend on how many resets the process had done before."""
    env.rng = rng
    stack = [getattr(env, "placement_initializer", None)]
    while stack:
        s = stack.pop()
        if s is None:
            continue
        s.rng = rng
        for obj in getattr(s, "mujoco_objects", []):
            if hasattr(obj, "rng"):
                obj.rng = rng
        stack.extend(getattr(s, "samplers", {}).values())


@dataclass
class Phase:
    """Move to ``target`` until within ``tol`` (or, with ``steps``, hold ``target`` - the position
    at the phase's start when None - for that many steps), gripper command ``grip``."""

    target: np.ndarray | None
    grip: float
    tol: float = 0.01
    steps: int | None = None
    speed: float = 1.0  # cap on the translation command, times the operator's own


def demonstrate_lift(env: RobosuiteEnv, rng: np.random.Generator, operator: str = "better",
                     seed: int | None = None) -> Demo | None:
    """One scripted Lift demonstration from ``env.reset(seed=seed)``; None if it fails."""
    obs, _ = env.reset(seed=seed)
    side, hover = rng.choice([-1.0, 1.0]), rng.uniform(0.05, 0.12)
    lateral = rng.uniform(0.04, 0.12)
    cube = env.object_pos()
    plan = [Phase(cube + [0.0, side * lateral, hover + 0.06], -1, 0.03),
            Phase(cube + [0.0, 0.0, hover], -1, 0.015),
            Phase(cube + [0.0, 0.0, -0.003], -1, 0.008),
            Phase(None, 1, steps=int(rng.integers(6, 12))),
            Phase(cube + [0.0, 0.0, 0.2], 1, 0.0)]
    return _run_plan(env, rng, plan, operator)


def demonstrate_can(env: RobosuiteEnv, rng: np.random.Generator, operator: str = "better",
                    seed: int | None = None) -> Demo | None:
    """One scripted PickPlaceCan demonstration: grasp the can, carry it over its bin, drop it."""
    obs, _ = env.reset(seed=seed)
    side, hover = rng.choice([-1.0, 1.0]), rng.uniform(0.06, 0.12)
    lateral = rng.uniform(0.04, 0.1)
    can = env.object_pos()
    goal = np.asarray(env.env.target_bin_placements[env.env.object_to_id["can"]], dtype=np.float64)
    drop = goal + [rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), 0.0]
    carry = rng.uniform(0.18, 0.25)  # clear of the wall between the bins
    plan = [Phase(can + [0.0, side * lateral, hover + 0.06], -1, 0.03),
            Phase(can + [0.0, 0.0, hover], -1, 0.015),
            Phase(can + [0.0, 0.0, 0.01], -1, 0.008),
            Phase(None, 1, steps=int(rng.integers(10, 16))),
            Phase(can + [0.0, 0.0, carry], 1, 0.02, speed=0.7),
            Phase(drop + [0.0, 0.0, carry], 1, 0.02, speed=0.5),  # carried slowly: a swung can slips
            Phase(None, -1, steps=40)]
    return _run_plan(env, rng, plan, operator)


def _run_plan(env: RobosuiteEnv, rng: np.random.Generator, plan: list[Phase], operator: str) -> Demo | None:
    gain, noise, cap = OPERATORS[operator]
    phase, held, hold_at = 0, 0, None

    def act(obs: dict) -> np.ndarray:
        nonlocal phase, held, hold_at
        eef = obs["robot0_eef_pos"].astype(np.float64)
        ph = plan[min(phase, len(plan) - 1)]
        if ph.steps is not None:
            hold_at = eef if hold_at is None else hold_at
            target = hold_at if ph.target is None else ph.target
            held += 1
            if held >= ph.steps and phase < len(plan) - 1:
                phase, held, hold_at = phase + 1, 0, None
        else:
            target = ph.target
            if np.linalg.norm(target - eef) < ph.tol and phase < len(plan) - 1:
                phase += 1
        a = np.zeros(7)
        lim = cap * ph.speed
        a[:3] = np.clip(gain * (target - eef) / 0.05 + noise * rng.normal(size=3), -lim, lim)
        a[6] = ph.grip
        return a

    return record_demo(env, env._obs(env.env._get_observations()), act, list(env.observation_space.spaces))


def make_lift_demos(n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = True, keep=None) -> DemoDataset:
    """``n`` successful scripted Lift demonstrations (see :func:`make_demos`)."""
    return make_demos("Lift", n, quality, seed, progress, keep=keep)


def make_can_demos(n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = True, keep=None) -> DemoDataset:
    """``n`` successful scripted PickPlaceCan demonstrations (see :func:`make_demos`)."""
    return make_demos("PickPlaceCan", n, quality, seed, progress, keep=keep)


def make_lift_image_demos(n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = True,
                          keep=None, camera_render: str = "fast") -> DemoDataset:
    """Scripted Lift demonstrations with the shoulder and wrist cameras (84 x 84), rendered the
    ``camera_render`` way (:data:`CAMERA_RENDERS`)."""
    return make_demos("Lift", n, quality, seed, progress, cameras=CAMERAS, keep=keep, camera_render=camera_render)


def make_demos(env_name: str, n: int = 200, quality: str = "ph", seed: int = 0, progress: bool = True,
               cameras: tuple[str, ...] = (), keep=None, camera_render: str = "fast") -> DemoDataset:
    """``n`` successful scripted demonstrations of ``env_name``, see
    :func:`cdp.il.demos.collect_demos`."""
    env = RobosuiteEnv(env_name, cameras=cameras, camera_render=camera_render)
    demonstrate = {"Lift": demonstrate_lift, "PickPlaceCan": demonstrate_can}[env_name]
    return collect_demos(env, demonstrate, list(OPERATORS), n, quality, seed, env.env_args(), progress,
                         f"{env_name} {quality} demos", keep=keep)
