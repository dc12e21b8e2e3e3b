"""Minari datasets (from the local store, ``MINARI_DATASETS_PATH`` or ``~/.minari``) to
:class:`Transitions`, and their own reference scores."""

from __future__ import annotations

from .scores import ScoreReference
from .transitions import DatasetError, Transitions


def _load(dataset_id: str):
    import minari

    local = minari.list_local_datasets()
    if dataset_id not in local:
        from .generate import recipe

        how = recipe(dataset_id)
        raise DatasetError(f"Minari dataset {dataset_id!r} is not in the local store; local: {sorted(local)}"
                           + (f"; make it with `{how.command}`" if how else ""))
    return minari.load_dataset(dataset_id)


def load_minari(dataset_id: str) -> Transitions:
    """All episodes of a local Minari dataset (Box actions; Box observations, or a goal dict whose
    ``observation`` entry is what the agent sees, as in Minari's kitchen datasets)."""
    ds = _load(dataset_id)
    episodes = [{"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
                 "terminations": ep.terminations, "truncations": ep.truncations} for ep in ds.iterate_episodes()]
    for i, ep in enumerate(episodes):
        if isinstance(ep["observations"], dict):
            # goal-conditioned layouts (Minari's kitchen): the agent sees the flat "observation" entry
            if "observation" not in ep["observations"]:
                raise DatasetError(f"{dataset_id}: episode {i} has dict observations without an 'observation' entry "
                                   f"(keys {sorted(ep['observations'])}); only Box or goal-dict observations are supported")
            ep["observations"] = ep["observations"]["observation"]
    return Transitions.from_episodes(episodes)


def minari_reference(dataset_id: str) -> ScoreReference:
    """The dataset's own ``ref_min_score`` / ``ref_max_score`` (not D4RL's numbers)."""
    meta = _load(dataset_id).storage.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        raise DatasetError(f"Minari dataset {dataset_id!r} has no ref_min_score/ref_max_score")
    return ScoreReference(float(lo), float(hi), f"minari:{dataset_id}")
