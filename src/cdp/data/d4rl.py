"""Reader for D4RL's HDF5 files (``observations, actions, rewards, terminals, timeouts`` and,
when present, ``next_observations``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .transitions import DatasetError, Transitions, open_hdf5

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


def load_d4rl_hdf5(path: str | Path) -> Transitions:
    """Load a D4RL dataset file into :class:`Transitions`.

    Episodes end at a terminal or a timeout. Without ``next_observations`` the next observation
    is the following row, and the last row of every episode that has no following row in the
    same episode is dropped (what D4RL's ``qlearning_dataset`` does at timeouts); a terminal
    row keeps the following row as its (unused, never bootstrapped) next observation.
    """
    path = Path(path)
    with open_hdf5(path, f"D4RL file not found: {path}") as fh:
        missing = [k for k in REQUIRED if k not in fh]
        if missing:
            raise DatasetError(f"{path}: missing D4RL key(s) {missing}; found {sorted(fh.keys())}")
        data = {k: np.asarray(fh[k]) for k in REQUIRED}
        nxt = np.asarray(fh["next_observations"]) if "next_observations" in fh else None
    obs, term, tout = data["observations"], data["terminals"].astype(bool), data["timeouts"].astype(bool)
    n = obs.shape[0]
    for k in ("actions", "rewards", "terminals", "timeouts"):
        if data[k].shape[0] != n:
            raise DatasetError(f"{path}: {k} has {data[k].shape[0]} rows, observations has {n}")
    ends = term | tout
    episode = np.concatenate([[0], np.cumsum(ends[:-1])])
    if nxt is not None:
        keep = np.ones(n, dtype=bool)
    else:
        nxt = np.concatenate([obs[1:], obs[-1:]])
        # a row needs a successor in the same episode, unless it is terminal (not bootstrapped)
        keep = np.concatenate([episode[1:] == episode[:-1], [False]]) | term
        keep[-1] = bool(term[-1])
    return Transitions(observations=obs[keep], actions=data["actions"][keep], rewards=data["rewards"][keep],
                       next_observations=nxt[keep], terminals=term[keep], timeouts=tout[keep], episode=episode[keep])
