"""Demonstrations in robomimic's HDF5 layout: a reader (a user's downloaded ``low_dim.hdf5``
trains as is) and a writer (the project's own scripted demonstrations).

Layout::

    data/                        attrs: total (transitions), env_args (JSON string)
      demo_0/                    attrs: num_samples
        obs/<key>                [N, ...]  observation streams, e.g. robot0_eef_pos (float), agentview_image
                                           ([N, H, W, 3] uint8)
        next_obs/<key>           [N, ...]  (optional)
        actions                  [N, A]
        rewards, dones           [N]
        states                   [N, S]    simulator states (optional)
    mask/<filter>                [M] bytes  demo names, e.g. mask/train, mask/valid, mask/20_percent
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .transitions import DatasetError, open_hdf5


@dataclass
class Demo:
    """One demonstration: ``obs[key]`` ``[N, ...]``, ``actions`` ``[N, A]``, ``rewards`` / ``dones``
    ``[N]``, optional ``states`` ``[N, S]``."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class DemoDataset:
    """Demonstrations by name (``demo_0``, ...), the environment description and filter masks.
    ``attempts``: how many attempts a scripted demonstrator made to record them, failed ones
    included (None when unknown, as in robomimic's own files); kept as the file's
    ``data.attrs["attempts"]``."""

    demos: dict[str, Demo]
    env_args: dict = field(default_factory=dict)
    masks: dict[str, list[str]] = field(default_factory=dict)
    attempts: int | None = None

    @property
    def obs_keys(self) -> list[str]:
        return sorted(next(iter(self.demos.values())).obs) if self.demos else []

    @property
    def action_dim(self) -> int:
        return int(next(iter(self.demos.values())).actions.shape[1])

    def num_transitions(self) -> int:
        return sum(len(d) for d in self.demos.values())

    def subset(self, names: list[str]) -> DemoDataset:
        missing = [n for n in names if n not in self.demos]
        if missing:
            raise DatasetError(f"demos {missing[:3]} are not in the dataset")
        return DemoDataset({n: self.demos[n] for n in names}, self.env_args, {})

    def fraction(self, frac: float, seed: int = 0) -> DemoDataset:
        """A seeded random ``frac`` of the demonstrations (whole demos, at least one)."""
        if not 0 < frac <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {frac}")
        if frac == 1:
            return self
        names = sorted(self.demos, key=_demo_index)
        k = max(1, int(round(frac * len(names))))
        keep = np.random.default_rng(seed).choice(len(names), k, replace=False)
        return self.subset([names[i] for i in sorted(keep)])

    def check_against(self, obs_shapes: dict[str, tuple[int, ...]], action_dim: int, task: str) -> None:
        """One clear error naming the mismatch if the demos do not fit a task's spaces."""
        demo = next(iter(self.demos.values()))
        missing = sorted(set(obs_shapes) - set(demo.obs))
        if missing:
            raise DatasetError(f"dataset lacks observation key(s) {missing} that task {task} needs "
                               f"(dataset has {sorted(demo.obs)})")
        for k, shape in obs_shapes.items():
            if tuple(demo.obs[k].shape[1:]) != tuple(shape):
                raise DatasetError(f"observation {k!r} has shape {tuple(demo.obs[k].shape[1:])} in the dataset, "
                                   f"task {task} gives {tuple(shape)}")
        if self.action_dim != action_dim:
            raise DatasetError(f"dataset actions have {self.action_dim} dims, task {task} takes {action_dim}")


def _demo_index(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else 1 << 62


def _env_args(data, path: Path) -> dict:
    try:
        return json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(f"{path}: data.attrs['env_args'] is not valid JSON ({e})") from None


def read_env_args(path: str | Path) -> dict:
    """A robomimic file's ``data.attrs["env_args"]`` (the environment it was recorded in), without
    reading its demonstrations; ``{}`` where it has none."""
    path = Path(path)
    with open_hdf5(path, f"no robomimic dataset at {path}") as fh:
        if "data" not in fh:
            raise DatasetError(f"{path} has no 'data' group: not a robomimic dataset")
        return _env_args(fh["data"], path)


def read_robomimic(path: str | Path, obs_keys: list[str] | None = None, filter_key: str | None = None) -> DemoDataset:
    """Read ``path`` (robomimic layout). ``obs_keys``: streams to load (default all);
    ``filter_key``: only the demos listed in ``mask/<filter_key>``."""
    path = Path(path)
    with open_hdf5(path, f"no robomimic dataset at {path}") as fh:
        if "data" not in fh:
            raise DatasetError(f"{path} has no 'data' group: not a robomimic dataset")
        data = fh["data"]
        env_args = _env_args(data, path)
        masks = {k: [n.decode() if isinstance(n, bytes) else str(n) for n in fh["mask"][k][()]]
                 for k in (fh["mask"] if "mask" in fh else [])}
        names = sorted(data.keys(), key=_demo_index)
        if filter_key is not None:
            if filter_key not in masks:
                raise DatasetError(f"{path} has no mask/{filter_key} (masks: {sorted(masks)})")
            names = sorted(masks[filter_key], key=_demo_index)
            absent = [n for n in names if n not in data]
            if absent:
                raise DatasetError(f"{path}: mask/{filter_key} lists {absent[:3]}, which data/ does not hold")
        if not names:
            raise DatasetError(f"{path} holds no demonstrations")
        demos = {}
        for name in names:
            g = data[name]
            for k in ("obs", "actions"):
                if k not in g:
                    raise DatasetError(f"{path}: data/{name} has no '{k}'")
            keys = obs_keys if obs_keys is not None else list(g["obs"].keys())
            absent = [k for k in keys if k not in g["obs"]]
            if absent:
                raise DatasetError(f"{path}: data/{name}/obs lacks {absent} (has {sorted(g['obs'].keys())})")
            actions = np.asarray(g["actions"][()], dtype=np.float32)
            n = actions.shape[0]
            rewards = np.asarray(g["rewards"][()], dtype=np.float32) if "rewards" in g else np.zeros(n, np.float32)
            dones = np.asarray(g["dones"][()]).astype(bool) if "dones" in g else np.eye(1, n, n - 1, dtype=bool)[0]
            demo = Demo({k: _obs_array(g["obs"][k][()]) for k in keys}, actions, rewards, dones,
                        np.asarray(g["states"][()]) if "states" in g else None)
            _validate(demo, f"{path}: data/{name}")
            demos[name] = demo
        attempts = int(data.attrs["attempts"]) if "attempts" in data.attrs else None
    return DemoDataset(demos, env_args, masks, attempts)


def _obs_array(v: np.ndarray) -> np.ndarray:
    """Images stay uint8 (robomimic stores them ``[N, H, W, 3]`` uint8); other streams float32."""
    v = np.asarray(v)
    return v if v.dtype == np.uint8 else v.astype(np.float32)


def _validate(demo: Demo, where: str) -> None:
    n = len(demo)
    if demo.actions.ndim != 2 or n == 0:
        raise DatasetError(f"{where}: actions must be [N > 0, A], got {demo.actions.shape}")
    if n < 2:
        raise DatasetError(f"{where}: one step; a demonstration needs at least 2 (an observation that leads somewhere)")
    for k, v in [*(("obs/" + k, v) for k, v in demo.obs.items()), ("actions", demo.actions), ("rewards", demo.rewards)]:
        if v.shape[0] != n:
            raise DatasetError(f"{where}: {k} has {v.shape[0]} rows, actions have {n}")
        if not np.isfinite(v).all():
            row = int(np.argwhere(~np.isfinite(v.reshape(n, -1)))[0, 0])
            raise DatasetError(f"{where}: {k} has NaN or inf (first at row {row})")
    if demo.dones.shape[0] != n:
        raise DatasetError(f"{where}: dones has {demo.dones.shape[0]} rows, actions have {n}")


def write_robomimic(path: str | Path, dataset: DemoDataset) -> Path:
    """Write ``dataset`` in robomimic's layout, atomically (a temporary file renamed into place)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as fh:
            data = fh.create_group("data")
            data.attrs["total"] = dataset.num_transitions()
            data.attrs["env_args"] = json.dumps(dataset.env_args)
            if dataset.attempts is not None:
                data.attrs["attempts"] = dataset.attempts
            for name, demo in dataset.demos.items():
                _validate(demo, name)
                g = data.create_group(name)
                g.attrs["num_samples"] = len(demo)
                for k, v in demo.obs.items():  # images compressed, as robomimic's image datasets are
                    g.create_dataset(f"obs/{k}", data=v, **({"compression": "gzip"} if v.dtype == np.uint8 else {}))
                g.create_dataset("actions", data=demo.actions)
                g.create_dataset("rewards", data=demo.rewards)
                g.create_dataset("dones", data=demo.dones.astype(np.int64))
                if demo.states is not None:
                    g.create_dataset("states", data=demo.states)
            for k, names in dataset.masks.items():
                fh.create_dataset(f"mask/{k}", data=np.array([n.encode() for n in names], dtype="S"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
