"""Behaviour cloning: a deterministic MLP policy ``pi(s)`` regressed onto the dataset's actions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..update import zero_step
from .agent import Agent
from .critics import mlp


@dataclass
class BCConfig:
    lr: float = 3e-4
    hidden: int = 256


class BC(Agent):
    def __init__(self, obs_dim: int, act_dim: int, cfg: BCConfig, device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.policy = mlp(obs_dim, act_dim, cfg.hidden).to(self.device)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.step = 0

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.policy(obs))

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean squared error of ``tanh(pi(s))`` to the dataset's actions."""
        return (torch.tanh(self.policy(batch["obs"])) - batch["act"]).pow(2).mean()

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = self.loss(batch)
        zero_step(self.opt, loss)
        return {"bc_loss": loss.detach()}

    def state_keys(self) -> list[str]:
        return ["policy", "opt"]
