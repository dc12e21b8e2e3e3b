"""A 1-D temporal UNet over an action chunk with FiLM conditioning (the design of Diffusion
Policy's ConditionalUnet1D: Conv1d + GroupNorm + Mish residual blocks, a down and an up path
over the action horizon, time and observation features modulating every block).

``UNet1D(action_dim, cond_dim)(a_t [B, Tp, d], t [B], cond [B, cond_dim]) -> [B, Tp, d]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mlp import Mish, SinusoidalEmbedding


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length-preserving."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int) -> None:
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; between them the features are scaled and shifted per channel by a linear
    map of the conditioning vector (FiLM). A 1x1 conv matches channels on the skip path."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int = 5, groups: int = 8) -> None:
        super().__init__()
        self.block1, self.block2 = ConvBlock(c_in, c_out, kernel, groups), ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: ``[B, C_in, T]``, cond: ``[B, cond_dim]`` -> ``[B, C_out, T]``."""
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.block2(scale * self.block1(x) + shift) + self.skip(x)


class UNet1D(nn.Module):
    """Noise (or clean-chunk) predictor over an action chunk.

    action_dim: ``d``. cond_dim: size of the flattened observation features (e.g. ``To * obs_dim``),
    0 for none. dims: channels per level (Diffusion Policy uses (256, 512, 1024); smaller here
    for CPU). The horizon must be divisible by ``2 ** (len(dims) - 1)``.
    """

    def __init__(self, action_dim: int, cond_dim: int = 0, dims: tuple[int, ...] = (64, 128, 256),
                 t_dim: int = 64, kernel: int = 5, groups: int = 8) -> None:
        super().__init__()
        if action_dim < 1 or cond_dim < 0 or not dims:
            raise ValueError("action_dim must be positive, cond_dim >= 0 and dims non-empty")
        self.action_dim, self.cond_dim, self.levels = action_dim, cond_dim, len(dims)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 4 * t_dim), Mish(),
                                      nn.Linear(4 * t_dim, t_dim))
        c = t_dim + cond_dim
        chans = [action_dim, *dims]
        self.down = nn.ModuleList()
        for i, (ci, co) in enumerate(zip(chans[:-1], chans[1:])):
            last = i == len(dims) - 1
            self.down.append(nn.ModuleList([FiLMResBlock(ci, co, c, kernel, groups), FiLMResBlock(co, co, c, kernel, groups),
                                            nn.Identity() if last else nn.Conv1d(co, co, 3, stride=2, padding=1)]))
        self.mid = nn.ModuleList([FiLMResBlock(dims[-1], dims[-1], c, kernel, groups) for _ in range(2)])
        self.up = nn.ModuleList()
        for ci, co in reversed(list(zip(chans[1:-1], chans[2:]))):  # co -> ci; the skip doubles the input
            self.up.append(nn.ModuleList([FiLMResBlock(2 * co, ci, c, kernel, groups), FiLMResBlock(ci, ci, c, kernel, groups),
                                          nn.ConvTranspose1d(ci, ci, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(ConvBlock(dims[0], dims[0], kernel, groups), nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, a_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """a_t: ``[B, Tp, d]``, t: ``[B]`` in [0, 1], cond: ``[B, cond_dim]``."""
        if a_t.ndim != 3 or a_t.shape[-1] != self.action_dim:
            raise ValueError(f"a_t must be [B, Tp, {self.action_dim}], got {tuple(a_t.shape)}")
        if a_t.shape[1] % 2 ** (self.levels - 1):
            raise ValueError(f"horizon {a_t.shape[1]} must be divisible by {2 ** (self.levels - 1)}")
        B = a_t.shape[0]
        emb = self.time_mlp(t).expand(B, -1)
        if self.cond_dim:
            if cond is None or cond.shape != (B, self.cond_dim):
                raise ValueError(f"cond must be [{B}, {self.cond_dim}], got {None if cond is None else tuple(cond.shape)}")
            emb = torch.cat([emb, cond], -1)
        x = a_t.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            x = res2(res1(x, emb), emb)
            skips.append(x)
            x = down(x)
        for res in self.mid:
            x = res(x, emb)
        for res1, res2, up in self.up:
            x = res2(res1(torch.cat([x, skips.pop()], dim=1), emb), emb)
            x = up(x)
        return self.final(x).transpose(1, 2)

