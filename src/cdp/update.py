"""A training update in three parts, shared by the offline-RL agents and the imitation step, so
one mechanism (:class:`cdp.capture.GraphedUpdate`) can record any of them as a CUDA graph.

``prepare`` makes this step's host-side choices and writes them into device tensors;
``compute`` does the device work on a batch (losses, backward passes, optimiser steps) with
fixed shapes and no host reads, returning its losses as 0-d tensors; ``advance`` moves the step
counter and whatever follows it (learning-rate schedules, target and EMA averages)."""

from __future__ import annotations

import torch
from torch import Tensor


class Update:
    """Subclasses set ``step`` and ``device`` and implement :meth:`compute` and :meth:`optimizers`.

    Random draws go through ``generator`` (on ``device``) and ``host_generator`` (host-side
    choices in ``prepare``); None, the default, is torch's own generators. Runs trained side by
    side in one process (:mod:`cdp.rl.ensemble`) each get their own pair, so every run draws
    what it would draw alone."""

    step: int = 0
    device: torch.device = torch.device("cpu")
    generator: torch.Generator | None = None
    host_generator: torch.Generator | None = None

    def own_generators(self) -> None:
        """Give this update private generators that continue from torch's default ones as they
        stand now (the point a run started alone would be at)."""
        self.host_generator = torch.Generator()
        self.host_generator.set_state(torch.get_rng_state())
        if self.device.type == "cuda":
            dev = torch.Generator(self.device)
            dev.set_state(torch.cuda.get_rng_state(self.device))
            self.generator = dev
        else:
            self.generator = self.host_generator

    def generators(self) -> list[torch.Generator]:
        """The private generators the device work draws from (a CUDA graph must advance each on
        every replay); none when it draws from torch's default ones."""
        return [] if self.generator is None else [self.generator]

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One training update on ``batch``; its losses as 0-d tensors on ``device``."""
        self.prepare()
        out = self.compute(batch)
        self.advance()
        return out

    def prepare(self) -> None:
        """Host-side choices for the coming step (nothing by default)."""

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def advance(self) -> None:
        self.step += 1

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError


def zero_step(opt: torch.optim.Optimizer, loss: Tensor, clip: float | None = None,
              params: list[torch.nn.Parameter] | None = None) -> None:
    """``zero_grad``, ``backward``, optional gradient-norm clip of ``params``, ``step``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)  # type: ignore[arg-type]
    opt.step()


@torch.no_grad()
def soft_update(target: torch.nn.Module, source: torch.nn.Module, weight: float) -> None:
    """``target <- target + weight * (source - target)`` for paired parameters, in one multi-tensor
    op (a few launches on a GPU instead of one per parameter)."""
    pairs = list(zip(target.parameters(), source.parameters()))
    if pairs:
        torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], weight)
