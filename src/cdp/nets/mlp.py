"""The MLP denoiser of DQL / EDP: (noisy action, time embedding, state) -> eps or x0."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mish(nn.Module):
    """``x * tanh(softplus(x))`` written out: same values as ``nn.Mish``, but built from ops that
    have vmap batching rules for their forward-mode derivatives (``nn.Mish``'s JVP goes through
    ``mish_backward``, which vmap runs as a slow per-sample loop)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.tanh(F.softplus(x))


class SinusoidalEmbedding(nn.Module):
    """``[B] -> [B, dim]`` sin/cos features of ``scale * t`` (t in [0, 1]; ``scale = 1000``
    puts continuous time on the usual discrete-step scale)."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class MLPDenoiser(nn.Module):
    """Mish MLP (``depth x hidden``, 3 x 256 by default) on ``[a_t, emb(t), state]``.

    action_shape: ``d`` or a shape such as ``(H, d)`` (flattened inside). state_dim: 0 for an
    unconditional model. Output has the action's shape; whether it means eps or x0 is the
    training loss's choice.
    """

    def __init__(self, action_shape: int | tuple[int, ...], state_dim: int = 0, hidden: int = 256,
                 depth: int = 3, t_dim: int = 16) -> None:
        super().__init__()
        self.action_shape = (action_shape,) if isinstance(action_shape, int) else tuple(action_shape)
        if any(n < 1 for n in self.action_shape) or state_dim < 0 or hidden < 1 or depth < 1:
            raise ValueError("action_shape, hidden and depth must be positive and state_dim >= 0")
        self.state_dim = state_dim
        d = math.prod(self.action_shape)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), Mish(),
                                      nn.Linear(2 * t_dim, t_dim))
        layers: list[nn.Module] = []
        width = d + t_dim + state_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), Mish()]
            width = hidden
        layers.append(nn.Linear(width, d))
        self.mid = nn.Sequential(*layers)

    def forward(self, a_t: Tensor, t: Tensor, state: Tensor | None = None) -> Tensor:
        """a_t: ``[B, *action_shape]``, t: ``[B]`` in [0, 1], state: ``[B, state_dim]``."""
        B = a_t.shape[0]
        if tuple(a_t.shape[1:]) != self.action_shape:
            raise ValueError(f"a_t has shape {tuple(a_t.shape)}, expected [B, {', '.join(map(str, self.action_shape))}]")
        parts = [a_t.reshape(B, -1), self.time_mlp(t).expand(B, -1)]
        if self.state_dim:
            if state is None or state.shape != (B, self.state_dim):
                got = None if state is None else tuple(state.shape)
                raise ValueError(f"state must be [B, {self.state_dim}] = [{B}, {self.state_dim}], got {got}")
            parts.append(state)
        return self.mid(torch.cat(parts, dim=-1)).reshape(a_t.shape)
