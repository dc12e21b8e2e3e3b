"""Collecting scripted demonstrations into a robomimic-style dataset (shared by every task)."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from ..data.robomimic import Demo, DemoDataset

Demonstrator = Callable[..., "Demo | None"]  # (env, rng, operator, seed=...) -> a demo, or None on failure


def collect_demos(env: gym.Env, demonstrate: Demonstrator, operators: list[str], n: int, quality: str, seed: int,
                  env_args: dict, progress: bool = False, desc: str = "demos",
                  max_failures: int = 100) -> DemoDataset:
    """``n`` successful demonstrations. ``ph``: all by the first (proficient) operator; ``mh``: a
    third each of ``operators`` (robomimic's MH datasets name them in ``mask/``). Failed attempts
    are discarded and retried from the next initial state; initial states are drawn from reset
    seeds ``10000 + 1000 seed + k``, apart from the evaluation seeds (0, 1, ...). A seeded 90/10
    ``mask/train`` / ``mask/valid`` split is added. ``max_failures`` failed attempts in a row
    stop it with one error (a demonstrator that cannot succeed would otherwise loop forever)."""
    from tqdm.auto import tqdm

    if quality not in ("ph", "mh"):
        raise ValueError(f"quality must be 'ph' or 'mh', got {quality!r}")
    rng = np.random.default_rng(seed)
    ops = [operators[0]] * n if quality == "ph" else [operators[i * len(operators) // n] for i in range(n)]
    demos: dict[str, Demo] = {}
    masks: dict[str, list[str]] = {}
    reset_seed = 10_000 + 1000 * seed
    for op in tqdm(ops, disable=not progress, desc=desc):
        demo, first = None, reset_seed
        while demo is None:
            if reset_seed - first >= max_failures:
                raise RuntimeError(f"{desc}: the {op!r} demonstrator failed {max_failures} attempts in a row "
                                   f"(reset seeds {first}..{reset_seed - 1}) after {len(demos)} of {n} demonstrations")
            demo = demonstrate(env, rng, op, seed=reset_seed)
            reset_seed += 1
        name = f"demo_{len(demos)}"
        demos[name] = demo
        if quality == "mh":
            masks.setdefault(op, []).append(name)
    names = list(demos)
    valid = set(rng.choice(len(names), max(1, n // 10), replace=False).tolist())
    masks["valid"] = [names[i] for i in sorted(valid)]
    masks["train"] = [nm for i, nm in enumerate(names) if i not in valid]
    return DemoDataset(demos, env_args, masks)
