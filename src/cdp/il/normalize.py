"""Min-max normalisation to ``[-1, 1]`` per dimension (Diffusion Policy's choice for low-dim
observations and actions), kept as buffers so it travels with the policy's weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class MinMax(nn.Module):
    """``x -> 2 (x - lo) / (hi - lo) - 1``; dimensions with ``hi - lo < eps`` (constant in the
    data) are only shifted, so they map to 0 instead of blowing up."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(dim))
        self.register_buffer("hi", torch.ones(dim))

    @classmethod
    def fit(cls, x: np.ndarray | Tensor, eps: float = 1e-4) -> MinMax:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, np.shape(x)[-1])
        m = cls(x.shape[1])
        lo, hi = x.min(0).values, x.max(0).values
        flat = (hi - lo) < eps
        m.lo.copy_(torch.where(flat, lo - 1, lo))
        m.hi.copy_(torch.where(flat, lo + 1, hi))
        return m

    def forward(self, x: Tensor) -> Tensor:
        return 2 * (x - self.lo) / (self.hi - self.lo) - 1

    def inverse(self, y: Tensor) -> Tensor:
        return (y + 1) / 2 * (self.hi - self.lo) + self.lo
