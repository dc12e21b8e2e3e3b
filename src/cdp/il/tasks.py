"""Imitation tasks by name: how to make the environment, the observation streams a policy reads,
the action size, the rollout horizon and the scripted demonstrator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the command line reads task_names without loading them
    import gymnasium as gym

    from ..data.robomimic import DemoDataset


@dataclass(frozen=True)
class TaskSpec:
    name: str
    make_env: Callable[..., gym.Env]  # (**env_kwargs): see env_kwargs
    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    horizon: int
    make_demos: Callable[..., DemoDataset]  # (n, quality, seed, progress=, keep=) -> demos
    eval_batch: int = 50  # environments stepped together at evaluation (memory: robosuite ~240 MB each)

    @property
    def obs_keys(self) -> list[str]:
        return list(self.obs_shapes)

    @property
    def obs_dim(self) -> int:
        return sum(math.prod(s) for s in self.obs_shapes.values())

    @property
    def image_keys(self) -> list[str]:
        """The camera streams (``[H, W, 3]``) among ``obs_keys``, in order; empty for a state-only task."""
        return [k for k, s in self.obs_shapes.items() if len(s) == 3]

    def env_kwargs(self, env_args: dict) -> dict:
        """What an evaluation environment takes from a dataset's ``env_args``, so that its rollouts
        see what the demonstrations saw: for tasks with cameras, how they render
        (``camera_render``, :data:`cdp.il.robosuite_tasks.CAMERA_RENDERS`; a dataset that does not
        say, robomimic's own or one made here before the option, was rendered robosuite's way)."""
        if not self.image_keys:
            return {}
        return {"camera_render": (env_args.get("env_kwargs") or {}).get("camera_render", "robosuite")}


def _reach() -> TaskSpec:
    from . import reach

    return TaskSpec("reach", reach.MultiReach, reach.OBS_SHAPES, 2, reach.HORIZON, reach.make_demos)


# MultiReach made harder: four goals (24 orders), a smaller radius, a push on the velocity every
# step (the policy must correct), a horizon 1.75x the demonstrations' mean length
REACH_HARD = {"n_goals": 4, "radius": 0.06, "noise": 0.003, "horizon": 160}


def _reach_hard() -> TaskSpec:
    from functools import partial

    from . import reach

    return TaskSpec("reach-hard", partial(reach.MultiReach, **REACH_HARD), reach.obs_shapes(4), 2,
                    REACH_HARD["horizon"], partial(reach.make_demos, **REACH_HARD))


def _lift() -> TaskSpec:
    from . import robosuite_tasks as rs

    return TaskSpec("lift", lambda: rs.RobosuiteEnv("Lift"), rs.OBS_SHAPES["Lift"], 7, rs.HORIZON, rs.make_lift_demos,
                    eval_batch=10)


def _lift_image() -> TaskSpec:
    from . import robosuite_tasks as rs

    # low-dim streams first, then the cameras (an image policy's image_keys are the last obs_keys)
    shapes = rs.OBS_SHAPES["Lift"] | rs.image_shapes()
    return TaskSpec("lift-image", lambda **kw: rs.RobosuiteEnv("Lift", cameras=rs.CAMERAS, **kw), shapes, 7, rs.HORIZON,
                    rs.make_lift_image_demos, eval_batch=10)


def _transport() -> TaskSpec:
    from . import transport as tp

    return TaskSpec("transport", tp.TransportEnv, tp.OBS_SHAPES, 14, tp.HORIZON, tp.make_transport_demos, eval_batch=10)


def _can() -> TaskSpec:
    from . import robosuite_tasks as rs

    return TaskSpec("can", lambda: rs.RobosuiteEnv("PickPlaceCan"), rs.OBS_SHAPES["PickPlaceCan"], 7, rs.HORIZON,
                    rs.make_can_demos, eval_batch=10)


_TASKS: dict[str, Callable[[], TaskSpec]] = {"reach": _reach, "reach-hard": _reach_hard, "lift": _lift, "can": _can,
                                              "lift-image": _lift_image, "transport": _transport}


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise ValueError(f"unknown imitation task {name!r}; choose from {task_names()}")
    return _TASKS[name]()


QUALITIES = ("ph", "mh")  # robomimic's proficient-human and multi-human demonstration sets


def default_data_path(task: str, quality: str) -> Path:
    """Where ``cdp il make-data TASK QUALITY`` writes: ``data/il/<task>_<quality>.hdf5``."""
    return Path("data/il") / f"{task}_{quality}.hdf5"


def default_quality(task: str, path: str | Path) -> str | None:
    """The quality whose :func:`default_data_path` for ``task`` is ``path`` (so ``cdp il
    make-data`` makes that file with its defaults), or None."""
    return next((q for q in QUALITIES if Path(path) == default_data_path(task, q)), None)


def write_demos(task: str, quality: str, path: str | Path | None = None, n: int = 200, seed: int = 0,
                progress: bool = False, camera_render: str | None = None, if_missing: bool = False) -> Path:
    """Make ``n`` scripted demonstrations of ``task`` and write them in robomimic's layout
    (atomically) at ``path`` (default :func:`default_data_path`); returns the path. Each
    demonstration is kept in ``<path>.partial/`` as it is made, so an interrupted call continues
    where it stopped (:class:`cdp.il.demos.Progress`); the folder goes once the file is written.
    One process at a time makes a file (a lock, ``<path>.lock``): another waits, and with
    ``if_missing`` takes the file the first made instead of making it again.
    ``camera_render``: for tasks with cameras, how they render
    (:data:`cdp.il.robosuite_tasks.CAMERA_RENDERS`; default ``"fast"``)."""
    from ..data.robomimic import write_robomimic
    from ..runlog import exclusive
    from .demos import Progress

    spec = get_task(task)
    extra = {}
    if camera_render is not None:
        if not spec.image_keys:
            raise ValueError(f"camera_render applies to tasks with cameras, and {task} has none")
        extra["camera_render"] = camera_render
    path = Path(path or default_data_path(task, quality))
    keep = path.with_name(path.name + ".partial")
    with exclusive(path.with_name(path.name + ".lock"), f"waiting for another process making {path}"):
        if if_missing and path.is_file():
            return path  # made by the process this one waited for
        out = write_robomimic(path, spec.make_demos(n, quality, seed, progress=progress, keep=keep, **extra))
        Progress(keep, {}).clear()
    return out
