"""Q networks: ``Q(s, a)`` MLPs (3 x 256 Mish, as DQL/EDP) and a twin for clipped double Q."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets.mlp import mlp


class TwinQ(nn.Module):
    """Two independent ``Q(s, a) -> [B]`` heads."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, depth)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, depth)

    def forward(self, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def min_q(self, obs: Tensor, act: Tensor) -> Tensor:
        q1, q2 = self(obs, act)
        return torch.minimum(q1, q2)
