"""The in-memory transition batch every offline algorithm trains on."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..options import DATA_CUTS


class DatasetError(ValueError):
    """A dataset that cannot be used as given (missing keys, wrong shapes, non-finite values)."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """No dataset file at the path given."""


def open_hdf5(path: Path, missing: str):
    """``h5py.File(path, "r")``, or one clear error: :class:`DatasetNotFound` with ``missing`` when
    there is no file, :class:`DatasetError` when it is not HDF5."""
    import h5py

    if not path.is_file():
        raise DatasetNotFound(missing)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file ({e})") from None


@dataclass
class Transitions:
    """``N`` transitions ``(s, a, r, s', terminal, timeout)`` with the episode each belongs to.

    observations / next_observations ``[N, obs_dim]`` float32, actions ``[N, act_dim]`` float32,
    rewards ``[N]`` float32, terminals / timeouts ``[N]`` bool (a terminal ends the episode in
    the MDP: no bootstrap; a timeout only truncates it), episode ``[N]`` int64, non-decreasing.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode: np.ndarray

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.next_observations = np.asarray(self.next_observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminals = np.asarray(self.terminals).astype(bool).reshape(-1)
        self.timeouts = np.asarray(self.timeouts).astype(bool).reshape(-1)
        self.episode = np.asarray(self.episode, dtype=np.int64).reshape(-1)
        self.validate()

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(np.unique(self.episode).size)

    def validate(self) -> None:
        n = self.rewards.shape[0]
        if n == 0:
            raise DatasetError("dataset has no transitions")
        for name in ("observations", "next_observations", "actions"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DatasetError(f"{name} must be [N={n}, dim], got shape {arr.shape}")
        for name in ("terminals", "timeouts", "episode"):
            if getattr(self, name).shape[0] != n:
                raise DatasetError(f"{name} must have N={n} entries, got {getattr(self, name).shape[0]}")
        if self.observations.shape[1] != self.next_observations.shape[1]:
            raise DatasetError(f"observations {self.observations.shape} and next_observations "
                               f"{self.next_observations.shape} differ in dimension")
        for name in ("observations", "next_observations", "actions", "rewards"):
            arr = getattr(self, name)
            bad = ~np.isfinite(arr)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise DatasetError(f"{name} contains NaN or inf (first at row {row})")
        if (np.diff(self.episode) < 0).any():
            raise DatasetError("episode ids must be non-decreasing (transitions stored episode by episode)")

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, in episode order ``[num_episodes]``."""
        _, inv = np.unique(self.episode, return_inverse=True)
        return np.bincount(inv, weights=self.rewards.astype(np.float64))

    def select_episodes(self, episodes: np.ndarray) -> Transitions:
        keep = np.isin(self.episode, episodes)
        return Transitions(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def fraction(self, fraction: float, seed: int = 0, cut: str = "trajectories") -> Transitions:
        """A random share of the data, reproducible by ``seed``: ``cut="trajectories"`` keeps
        ``round(fraction * episodes)`` whole episodes (few episodes); ``"transitions"`` keeps
        ``round(fraction * N)`` transitions drawn uniformly from the whole dataset, as the official
        runs' ``data_portion`` does (few transitions from many episodes). Order is kept."""
        if cut not in DATA_CUTS:
            raise DatasetError(f"data cut must be one of {DATA_CUTS}, got {cut!r}")
        if not 0 < fraction <= 1:
            raise DatasetError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        rng = np.random.default_rng(seed)
        if cut == "transitions":
            k = int(round(fraction * len(self)))
            if k == 0:
                raise DatasetError(f"fraction {fraction:g} of {len(self)} transitions keeps none")
            keep = np.sort(rng.choice(len(self), size=k, replace=False))
            return Transitions(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})
        ids = np.unique(self.episode)
        k = int(round(fraction * ids.size))
        if k == 0:
            raise DatasetError(f"fraction {fraction:g} of {ids.size} trajectories keeps none")
        return self.select_episodes(np.sort(rng.choice(ids, size=k, replace=False)))

    @classmethod
    def from_episodes(cls, episodes: list[dict[str, np.ndarray]]) -> Transitions:
        """From per-episode arrays: ``observations [T + 1, obs_dim]`` (the last is the final
        next observation), ``actions [T, act_dim]``, ``rewards``, ``terminations``,
        ``truncations`` ``[T]`` — the layout Gymnasium rollouts and Minari episodes have."""
        if not episodes:
            raise DatasetError("no episodes")
        parts: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(cls)}
        for i, ep in enumerate(episodes):
            obs = np.asarray(ep["observations"])
            T = len(ep["actions"])
            if obs.shape[0] != T + 1:
                raise DatasetError(f"episode {i}: observations must have T + 1 = {T + 1} rows, got {obs.shape[0]}")
            parts["observations"].append(obs[:-1])
            parts["next_observations"].append(obs[1:])
            parts["actions"].append(np.asarray(ep["actions"]))
            parts["rewards"].append(np.asarray(ep["rewards"]))
            parts["terminals"].append(np.asarray(ep["terminations"]))
            parts["timeouts"].append(np.asarray(ep["truncations"]))
            parts["episode"].append(np.full(T, i))
        return cls(**{k: np.concatenate(v) for k, v in parts.items()})
