"""Gymnasium environments by registered id, and nothing else."""

from __future__ import annotations


def make_env(env_id: str, **kwargs):
    """``gym.make(env_id)`` for a registered id. Gymnasium also accepts ``"module:Env-v0"`` and
    imports ``module`` first; env ids reach here from config files, sweep files and run folders
    that may come from someone else, so such ids are refused rather than imported. Any other
    failure to make the environment is one ``ValueError`` naming the id."""
    import gymnasium as gym

    if not isinstance(env_id, str) or ":" in env_id:
        raise ValueError(f"environment id {env_id!r} is not a registered Gymnasium id ('module:Env' ids, which import "
                         "a module, are refused: import it yourself so it registers its environments)")
    if env_id.startswith("cdp/kitchen"):
        from .data.kitchen import register

        register()
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise ValueError(f"unknown Gymnasium environment {env_id!r}: {e}") from None
