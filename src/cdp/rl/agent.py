"""What every offline-RL agent shares: a step counter and checkpointing of its named parts."""

from __future__ import annotations


class Agent:
    """Subclasses set ``step`` and list the attributes (modules, optimisers) that make up a
    checkpoint in :meth:`state_keys`."""

    step: int = 0

    def state_keys(self) -> list[str]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in self.state_keys()} | {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        missing = set(self.state_keys()) - set(sd)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)}: saved by another algorithm or config?")
        for k in self.state_keys():
            getattr(self, k).load_state_dict(sd[k])
        self.step = int(sd["step"])
