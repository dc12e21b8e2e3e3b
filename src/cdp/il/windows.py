"""Training windows over demonstrations: for every step ``t`` of every demo, the observation
history ``t - To + 1 .. t`` and the action chunk ``t - start .. t - start + Tp - 1`` (``start``:
the current step's index in the chunk), padded at the demo's ends by repeating its first
observation / last action (Diffusion Policy's padding)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.robomimic import DemoDataset


class ChunkWindows:
    """All windows of a dataset as index arrays into two flat tables."""

    def __init__(self, ds: DemoDataset, obs_keys: list[str], n_obs_steps: int, horizon: int, action_start: int) -> None:
        obs, act, oi, ai = [], [], [], []
        offset = 0
        for demo in ds.demos.values():
            n = len(demo)
            obs.append(np.concatenate([demo.obs[k].reshape(n, -1) for k in obs_keys], -1))
            act.append(demo.actions)
            t = np.arange(n)[:, None]
            oi.append(offset + np.clip(t - n_obs_steps + 1 + np.arange(n_obs_steps), 0, n - 1))
            ai.append(offset + np.clip(t - action_start + np.arange(horizon), 0, n - 1))
            offset += n
        self.obs = torch.as_tensor(np.concatenate(obs), dtype=torch.float32)  # [N, obs_dim]
        self.actions = torch.as_tensor(np.concatenate(act), dtype=torch.float32)  # [N, d]
        self.obs_idx = torch.as_tensor(np.concatenate(oi))  # [M, To]
        self.act_idx = torch.as_tensor(np.concatenate(ai))  # [M, Tp]

    def __len__(self) -> int:
        return int(self.obs_idx.shape[0])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``(obs [B, To, obs_dim], actions [B, Tp, d])`` for window indices ``idx [B]``."""
        return self.obs[self.obs_idx[idx]], self.actions[self.act_idx[idx]]
