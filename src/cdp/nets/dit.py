"""A diffusion transformer (DiT) over action tokens with adaLN-Zero conditioning.

Each action step of the chunk is a token; time and observation features form one conditioning
vector ``c`` that sets, per block, the shift / scale of both layer norms and a gate on each
residual branch (``adaLN-Zero``: the gates start at zero, so every block starts as the identity).

``DiT(action_dim, cond_dim)(a_t [B, Tp, d], t [B], cond [B, cond_dim]) -> [B, Tp, d]``.

Attention is written out (``softmax(q k^T / sqrt(d)) v``) rather than through
``scaled_dot_product_attention``: fused attention kernels lack the double backward / forward-mode
derivatives the contraction term takes through the network, and the chunks are short (16 tokens).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .mlp import Mish, SinusoidalEmbedding


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, W = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(W // self.heads), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, W))


class DiTBlock(nn.Module):
    """``x += gate_a * attn(modulate(LN(x)))``; ``x += gate_m * mlp(modulate(LN(x)))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sa, ca, ga, sm, cm, gm = self.ada(c).chunk(6, dim=-1)
        x = x + ga.unsqueeze(1) * self.attn(_modulate(self.norm1(x), sa, ca))
        return x + gm.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), sm, cm))


class DiT(nn.Module):
    """Noise (or clean-chunk) predictor over an action chunk of at most ``max_horizon`` steps.

    action_dim: ``d``. cond_dim: flattened observation features (0 for none). width / depth /
    heads: transformer size (DiT-S is 384 / 12 / 6; smaller defaults here for CPU).
    """

    def __init__(self, action_dim: int, cond_dim: int = 0, width: int = 128, depth: int = 4, heads: int = 4,
                 max_horizon: int = 64, t_dim: int = 64) -> None:
        super().__init__()
        if action_dim < 1 or cond_dim < 0 or depth < 1:
            raise ValueError("action_dim and depth must be positive and cond_dim >= 0")
        self.action_dim, self.cond_dim, self.max_horizon = action_dim, cond_dim, max_horizon
        self.embed = nn.Linear(action_dim, width)
        self.pos = nn.Parameter(torch.randn(1, max_horizon, width) * 0.02)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, width), Mish(), nn.Linear(width, width))
        self.cond_mlp = (nn.Sequential(nn.Linear(cond_dim, width), Mish(), nn.Linear(width, width))
                         if cond_dim else None)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, action_dim)
        for lin in (self.ada[1], self.out):  # adaLN-Zero: the whole network starts at output 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, a_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """a_t: ``[B, Tp, d]``, t: ``[B]`` in [0, 1], cond: ``[B, cond_dim]``."""
        if a_t.ndim != 3 or a_t.shape[-1] != self.action_dim or a_t.shape[1] > self.max_horizon:
            raise ValueError(f"a_t must be [B, Tp <= {self.max_horizon}, {self.action_dim}], got {tuple(a_t.shape)}")
        B, T = a_t.shape[:2]
        c = self.time_mlp(t).expand(B, -1)
        if self.cond_mlp is not None:
            if cond is None or cond.shape != (B, self.cond_dim):
                raise ValueError(f"cond must be [{B}, {self.cond_dim}], got {None if cond is None else tuple(cond.shape)}")
            c = c + self.cond_mlp(cond)
        x = self.embed(a_t) + self.pos[:, :T]
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm(x), shift, scale))
