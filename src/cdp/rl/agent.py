"""What every offline-RL agent shares: a step counter, the device it lives on, the three-part
update (:mod:`cdp.update`), and checkpointing of its named parts."""

from __future__ import annotations

import torch
from torch import Tensor

from ..capture import portable_state
from ..update import Update


class Agent(Update):
    """Subclasses set ``step`` and ``device`` (where their networks live; ``update`` and ``act``
    take and return tensors there), implement ``compute`` (see :class:`cdp.update.Update`) and
    list the attributes (modules, optimisers) that make up a checkpoint in :meth:`state_keys`."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [v for k in self.state_keys() if isinstance(v := getattr(self, k), torch.optim.Optimizer)]

    def state_keys(self) -> list[str]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        parts = {k: getattr(self, k) for k in self.state_keys()}
        return {k: portable_state(v) if isinstance(v, torch.optim.Optimizer) else v.state_dict()
                for k, v in parts.items()} | {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        missing = set(self.state_keys()) - set(sd)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)}: saved by another algorithm or config?")
        for k in self.state_keys():  # modules copy into their own device; optimisers move their state to their params'
            getattr(self, k).load_state_dict(sd[k])
        self.step = int(sd["step"])


def draw_one(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of ``probs [B, N]`` (rows summing to 1), as ``torch.multinomial(probs,
    1)`` draws it (the same exponential race, the same random numbers) but without its host-side
    check of the probabilities, which waits for the GPU and cannot run inside a CUDA graph."""
    return (probs / torch.empty_like(probs).exponential_(1, generator=generator)).argmax(-1)
