"""What every offline-RL agent shares: a step counter, the device it lives on, and checkpointing
of its named parts."""

from __future__ import annotations

import torch


class Agent:
    """Subclasses set ``step`` and ``device`` (where their networks live; ``update`` and ``act``
    take and return tensors there) and list the attributes (modules, optimisers) that make up a
    checkpoint in :meth:`state_keys`."""

    step: int = 0
    device: torch.device = torch.device("cpu")

    def state_keys(self) -> list[str]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in self.state_keys()} | {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        missing = set(self.state_keys()) - set(sd)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)}: saved by another algorithm or config?")
        for k in self.state_keys():  # modules copy into their own device; optimisers move their state to their params'
            getattr(self, k).load_state_dict(sd[k])
        self.step = int(sd["step"])
