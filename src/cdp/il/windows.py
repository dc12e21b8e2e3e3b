"""Training windows over demonstrations: for every step ``t`` of every demo, the observation
history ``t - To + 1 .. t`` and the action chunk ``t - start .. t - start + Tp - 1`` (``start``:
the current step's index in the chunk), padded at the demo's ends by repeating its first
observation / last action (Diffusion Policy's padding)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from ..data.robomimic import DemoDataset


class ChunkWindows:
    """All windows of a dataset as index arrays into flat tables: the low-dim streams as float32,
    camera streams (uint8 ``[N, H, W, 3]`` in the demos, the last ``obs_keys``) kept as uint8 (a
    quarter of the memory) and made float32 per batch. A batch's observation row is the streams
    flattened in ``obs_keys`` order either way."""

    def __init__(self, ds: DemoDataset, obs_keys: list[str], n_obs_steps: int, horizon: int, action_start: int) -> None:
        first = next(iter(ds.demos.values()))
        images = [k for k in obs_keys if first.obs[k].ndim == 4 and first.obs[k].dtype == np.uint8]
        if images and list(obs_keys[len(obs_keys) - len(images):]) != images:
            raise ValueError(f"camera streams {images} must be the last obs_keys ({obs_keys})")
        low_keys = obs_keys[:len(obs_keys) - len(images)]
        low, pix, act, oi, ai = [], [], [], [], []
        offset = 0
        for demo in ds.demos.values():
            n = len(demo)
            low.append(np.concatenate([demo.obs[k].reshape(n, -1) for k in low_keys], -1) if low_keys
                       else np.zeros((n, 0), np.float32))
            if images:
                pix.append(np.concatenate([demo.obs[k].reshape(n, -1) for k in images], -1))
            act.append(demo.actions)
            t = np.arange(n)[:, None]
            oi.append(offset + np.clip(t - n_obs_steps + 1 + np.arange(n_obs_steps), 0, n - 1))
            ai.append(offset + np.clip(t - action_start + np.arange(horizon), 0, n - 1))
            offset += n
        self.low = torch.as_tensor(np.concatenate(low), dtype=torch.float32)  # [N, low_dim]
        self.pixels = torch.as_tensor(np.concatenate(pix)) if images else None  # [N, image numbers], uint8
        self.actions = torch.as_tensor(np.concatenate(act), dtype=torch.float32)  # [N, d]
        self.obs_idx = torch.as_tensor(np.concatenate(oi))  # [M, To]
        self.act_idx = torch.as_tensor(np.concatenate(ai))  # [M, Tp]

    def __len__(self) -> int:
        return int(self.obs_idx.shape[0])

    def subset(self, rows: np.ndarray) -> ChunkWindows:
        """These windows only (``rows``: indices into this one), over the same tables."""
        out = copy.copy(self)
        out.obs_idx, out.act_idx = self.obs_idx[rows], self.act_idx[rows]
        return out

    def cut(self, fraction: float, seed: int) -> ChunkWindows:
        """A seeded random ``int(fraction * len(self))`` of the windows (at least one), as the
        official imitation runs' ``random_split`` keeps a share of the samples; order kept."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        k = max(1, int(fraction * len(self)))
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), k, replace=False)))

    @property
    def obs(self) -> Tensor:
        """The whole observation table ``[N, obs_dim]`` as float32 (a copy when there are cameras)."""
        return self._rows(slice(None))

    def obs_extremes(self) -> np.ndarray:
        """``[2, obs_dim]``: each column's minimum and maximum over the table (what a min-max
        normaliser is fitted on), without a float copy of the camera columns."""
        parts = [torch.stack([self.low.min(0).values, self.low.max(0).values])] if self.low.shape[1] else []
        if self.pixels is not None:
            parts.append(torch.stack([self.pixels.min(0).values, self.pixels.max(0).values]).float())
        return torch.cat(parts, 1).numpy()

    def _rows(self, idx) -> Tensor:
        if self.pixels is None:
            return self.low[idx]
        return torch.cat([self.low[idx], self.pixels[idx].float()], -1)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``(obs [B, To, obs_dim], actions [B, Tp, d])`` for window indices ``idx [B]``."""
        return self._rows(self.obs_idx[idx]), self.actions[self.act_idx[idx]]
