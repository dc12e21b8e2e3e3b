"""What the CDP paper (Abyaneh et al., ICLR 2026, arXiv 2601.01003) reports, for comparison only.

Only the figures this project was given are kept here; the paper's full tables were not
available offline. Scores are D4RL-normalised on D4RL's own datasets, which this project cannot
download: its medium-replay datasets are generated here (docs/offline_rl.md), so a row "matches"
by task and quality, never by data.
"""

from __future__ import annotations

#: CDP minus EDP, D4RL-normalised score, full data (the paper's offline-RL table).
GAIN_OVER_EDP: dict[str, float] = {"hopper-medium-replay": 8.4, "walker2d-medium-replay": 7.7}

#: Wall time per 100k training steps on a GPU, (base, CDP) seconds.
SECONDS_PER_100K: dict[str, tuple[float, float]] = {"rl": (4594.0, 5236.0), "il": (8210.0, 9056.0)}


def task_key(group: str) -> str | None:
    """``cdp/hopper/medium-replay-v0`` or ``hopper-medium-replay-v2`` -> ``hopper-medium-replay``
    when the paper has a number for it, else None."""
    low = group.lower()
    for key in GAIN_OVER_EDP:
        env, quality = key.split("-", 1)
        if env in low and quality in low:
            return key
    return None


def cost_ratio(kind: str) -> float:
    """The paper's CDP / base wall-time ratio for ``kind`` ("rl" or "il")."""
    base, cdp = SECONDS_PER_100K[kind]
    return cdp / base
