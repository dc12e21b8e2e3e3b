"""The official offline-RL runs' per-task settings.

The official CDP and EDP runs (CleanDiffuser's ``configs/edp/*/task/<task>.yaml``, read by
``scripts/cdp_rl.py``) set two numbers per D4RL task: ``eta``, the weight of the actor's Q term
(``L_pi = L_denoise + eta * L_q``), and ``weight_temperature``, the inverse temperature of the
softmax over the candidates' ``min Q`` at evaluation. Kitchen's dataset class also leaves the
rewards as they are, where the MuJoCo one rescales them (``normalize_reward``).

A dataset is matched to a task by the names in its id or file name (``cdp/kitchen/complete-v0``,
``D4RL/kitchen/mixed-v2``, ``hopper-medium-replay-v2.hdf5``, ``cdp/walker2d/medium-replay-sac-s1-v0``);
one that matches none gets :data:`OTHER` (the MuJoCo defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskSettings:
    eta: float  # weight of the actor's Q term
    weight_temperature: float  # evaluation (official preset): one candidate drawn from softmax(this * min Q)
    normalize_reward: bool  # official preset: rewards scaled by 1000 / (spread of episode returns)


#: ``(family, quality prefix) -> settings``, the task files' values; the first match wins, so a
#: quality that extends another (``medium-replay`` of ``medium``) comes first
PUBLISHED: tuple[tuple[str, str, TaskSettings], ...] = (
    ("kitchen", "", TaskSettings(eta=0.005, weight_temperature=5.0, normalize_reward=False)),
    ("hopper", "medium-replay", TaskSettings(eta=1.0, weight_temperature=300.0, normalize_reward=True)),
    ("hopper", "medium", TaskSettings(eta=1.0, weight_temperature=300.0, normalize_reward=True)),
    ("walker2d", "medium-replay", TaskSettings(eta=1.0, weight_temperature=100.0, normalize_reward=True)),
    ("walker2d", "medium", TaskSettings(eta=1.0, weight_temperature=300.0, normalize_reward=True)),
)
#: any other dataset: the MuJoCo tasks' Q weight and the hopper temperature
OTHER = TaskSettings(eta=1.0, weight_temperature=300.0, normalize_reward=True)


def task_settings(dataset: str, env_id: str | None = None) -> TaskSettings:
    """The published settings for the task that ``dataset`` (a Minari id or a file path) and
    ``env_id`` name, matched as ``<family>-<quality>`` in their lower-cased names with ``/`` and
    ``_`` read as ``-`` (a file by its name alone, not its folders); :data:`OTHER` when nothing
    matches."""
    if dataset.endswith((".hdf5", ".h5")):
        dataset = Path(dataset).name
    names = " ".join(s for s in (dataset, env_id or "") if s).lower().replace("/", "-").replace("_", "-")
    for family, quality, settings in PUBLISHED:
        if f"{family}-{quality}" in names if quality else family in names:
            return settings
    return OTHER
