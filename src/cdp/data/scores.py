"""Normalised scores ``100 (R - R_random) / (R_expert - R_random)``, tagged with their reference.

D4RL's reference returns and a Minari dataset's own ``ref_min_score`` / ``ref_max_score`` are
different numbers (different policies, often different environment versions); a score carries
the :class:`ScoreReference` it was computed with, so the two are never mixed silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreReference:
    random: float
    expert: float
    source: str  # e.g. "D4RL hopper" or "minari:mujoco/hopper/medium-v0"

    def __post_init__(self) -> None:
        if not np.isfinite([self.random, self.expert]).all() or self.expert == self.random:
            raise ValueError(f"reference returns must be finite and distinct, got {self.random}, {self.expert}")


@dataclass(frozen=True)
class NormalizedScore:
    value: float
    reference: ScoreReference

    def __str__(self) -> str:
        return f"{self.value:.1f} ({self.reference.source})"


# D4RL's reference returns (random / expert policies, MuJoCo v2 locomotion), from D4RL's infos.
D4RL_REFERENCES: dict[str, ScoreReference] = {
    "hopper": ScoreReference(-20.272305, 3234.3, "D4RL hopper"),
    "walker2d": ScoreReference(1.629008, 4592.3, "D4RL walker2d"),
    "halfcheetah": ScoreReference(-280.178953, 12135.0, "D4RL halfcheetah"),
    # kitchen: the return is the number of subtasks completed, 0-4
    "kitchen": ScoreReference(0.0, 4.0, "D4RL kitchen"),
}


def d4rl_reference(task: str) -> ScoreReference:
    """D4RL's reference for a task name such as ``hopper-medium-replay-v2`` or ``Hopper-v5``."""
    key = task.split("/")[-1].split("-")[0].lower()
    if key not in D4RL_REFERENCES:
        raise KeyError(f"no D4RL reference returns for task {task!r}; known: {sorted(D4RL_REFERENCES)}")
    return D4RL_REFERENCES[key]


def normalized_score(episode_return: float, reference: ScoreReference) -> NormalizedScore:
    return NormalizedScore(100.0 * (episode_return - reference.random) / (reference.expert - reference.random), reference)
