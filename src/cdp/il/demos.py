"""Collecting scripted demonstrations into a robomimic-style dataset (shared by every task)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from ..data.robomimic import Demo, DemoDataset
from ..io import atomic_write

Demonstrator = Callable[..., "Demo | None"]  # (env, rng, operator, seed=...) -> a demo, or None on failure


def record_demo(env: gym.Env, obs: dict, act: Callable[[dict], np.ndarray], keys: list[str],
                finished: Callable[[], bool] = lambda: False) -> Demo | None:
    """Roll a scripted controller ``act(obs) -> action`` from observation ``obs`` (the env just
    reset) for up to ``env.horizon`` steps, recording each step's observation ``keys``, simulator
    state, action, reward and termination; stop at termination, truncation or ``finished()``.
    The demonstration if its last step succeeded (terminated), else None."""
    rec: dict[str, list] = {k: [] for k in keys}
    actions, states, rewards, dones = [], [], [], []
    for _ in range(env.horizon):
        a = act(obs)
        for k in keys:
            rec[k].append(obs[k])
        states.append(env.get_state())
        actions.append(a)
        obs, r, term, trunc, _ = env.step(a)
        rewards.append(r)
        dones.append(term)
        if term or trunc or finished():
            break
    if not dones or not dones[-1]:
        return None
    return Demo({k: np.stack(v) for k, v in rec.items()}, np.stack(actions).astype(np.float32),
                np.array(rewards, np.float32), np.array(dones, bool), np.stack(states))


class Progress:
    """Demonstrations collected so far, kept in a folder so a long collection survives its
    process: one ``demo_<i>.npz`` per success and ``state.json`` (what the call was, the next reset
    seed and the random generator's state after the last success), each written atomically."""

    def __init__(self, folder: str | Path, call: dict) -> None:
        self.folder, self.call = Path(folder), call

    def load(self) -> tuple[list[Demo], int, dict] | None:
        """``(demos, next reset seed, generator state)``, or None when nothing was kept."""
        state_file = self.folder / "state.json"
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        if state["call"] != self.call:
            raise ValueError(f"{self.folder} holds demonstrations of another call ({state['call']}, not {self.call}): "
                             "remove it or finish that call")
        demos = []
        for i in range(state["count"]):
            with np.load(self.folder / f"demo_{i}.npz") as z:
                obs = {k[5:]: z[k] for k in z.files if k.startswith("obs__")}
                demos.append(Demo(obs, z["actions"], z["rewards"], z["dones"], z["states"] if "states" in z.files else None))
        return demos, state["reset_seed"], state["rng"]

    def add(self, demos: list[Demo], reset_seed: int, rng: np.random.Generator) -> None:
        """Keep ``demos[-1]`` and the state after it."""
        d, buf = demos[-1], io.BytesIO()
        arrays = {f"obs__{k}": v for k, v in d.obs.items()} | {"actions": d.actions, "rewards": d.rewards, "dones": d.dones}
        if d.states is not None:
            arrays["states"] = d.states
        np.savez(buf, **arrays)
        atomic_write(self.folder / f"demo_{len(demos) - 1}.npz", buf.getvalue())
        state = {"call": self.call, "count": len(demos), "reset_seed": reset_seed, "rng": rng.bit_generator.state}
        atomic_write(self.folder / "state.json", json.dumps(state).encode())

    def clear(self) -> None:
        for f in self.folder.glob("demo_*.npz"):
            f.unlink()
        (self.folder / "state.json").unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def collect_demos(env: gym.Env, demonstrate: Demonstrator, operators: list[str], n: int, quality: str, seed: int,
                  env_args: dict, progress: bool = False, desc: str = "demos",
                  max_failures: int = 100, keep: str | Path | None = None) -> DemoDataset:
    """``n`` successful demonstrations. ``ph``: all by the first (proficient) operator; ``mh``: a
    third each of ``operators`` (robomimic's MH datasets name them in ``mask/``). Failed attempts
    are discarded and retried from the next initial state; initial states are drawn from reset
    seeds ``10000 + 1000 seed + k``, apart from the evaluation seeds (0, 1, ...). A seeded 90/10
    ``mask/train`` / ``mask/valid`` split is added. ``max_failures`` failed attempts in a row
    stop it with one error (a demonstrator that cannot succeed would otherwise loop forever).
    ``keep``: a folder where each demonstration is kept as it is made (:class:`Progress`); a call
    that finds one from the same call continues after its last demonstration, with the same
    results as an uninterrupted call. The caller removes it once the dataset is written. The
    dataset's ``attempts`` counts every attempt, failed ones included (the progress bar shows it
    as it goes)."""
    from tqdm.auto import tqdm

    if quality not in ("ph", "mh"):
        raise ValueError(f"quality must be 'ph' or 'mh', got {quality!r}")
    rng = np.random.default_rng(seed)
    ops = [operators[0]] * n if quality == "ph" else [operators[i * len(operators) // n] for i in range(n)]
    demos: dict[str, Demo] = {}
    masks: dict[str, list[str]] = {}
    reset_seed = first_seed = 10_000 + 1000 * seed
    kept = Progress(keep, {"n": n, "quality": quality, "seed": seed, "desc": desc, "operators": list(operators),
                           "env_args": env_args}) \
        if keep is not None else None
    done = kept.load() if kept is not None else None
    if done is not None:
        reset_seed, rng.bit_generator.state = done[1], done[2]
        for i, d in enumerate(done[0]):
            demos[f"demo_{i}"] = d
            if quality == "mh":
                masks.setdefault(ops[i], []).append(f"demo_{i}")
    bar = tqdm(total=n, initial=len(demos), disable=not progress, desc=desc)
    for op in ops[len(demos):]:
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
        if kept is not None:
            kept.add(list(demos.values()), reset_seed, rng)
        bar.set_postfix_str(f"{reset_seed - first_seed} attempts", refresh=False)
        bar.update()
    bar.close()
    names = list(demos)
    valid = set(rng.choice(len(names), max(1, n // 10), replace=False).tolist())
    masks["valid"] = [names[i] for i in sorted(valid)]
    masks["train"] = [nm for i, nm in enumerate(names) if i not in valid]
    return DemoDataset(demos, env_args, masks, attempts=reset_seed - first_seed)
