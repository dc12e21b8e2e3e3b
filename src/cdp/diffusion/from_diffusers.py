"""The term on a policy built from Hugging Face ``diffusers`` parts (what Diffusion Policy and
LeRobot users train): a ``DDPMScheduler``'s noise schedule and prediction type in this library's
terms, and its integer timesteps as this library's times.

Conventions. A scheduler's ``alphas_cumprod[k]``, ``k = 0..T-1``, is the signal level after
``k + 1`` noising steps; here that is time ``t = (k + 1) / T`` of the discrete schedule
``VPSchedule.from_alphas_cumprod`` builds, so ``scheduler.add_noise(x0, noise, k)`` is
``schedule.q_sample(x0, (k + 1) / T, noise)``. Nothing here imports ``diffusers``: any object
with ``alphas_cumprod`` and a ``config`` holding ``num_train_timesteps`` and ``prediction_type``
will do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .schedule import Prediction, VPSchedule

#: diffusers' prediction types and this library's names for them
PREDICTION_TYPES: dict[str, Prediction] = {"epsilon": "eps", "sample": "x0"}


def schedule_from_scheduler(scheduler: Any) -> VPSchedule:
    """The discrete schedule whose ``alpha(t)^2`` at ``t = (k + 1) / T`` is the scheduler's
    ``alphas_cumprod[k]`` (as stored, so ``discretize(T)`` gives its values back)."""
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod: not a DDPM-style scheduler")
    ac = torch.as_tensor(ac)
    if ac.numel() and float(ac.min()) <= 0:
        raise ValueError("the scheduler's alphas_cumprod reaches 0 (a zero-terminal-SNR schedule): the sampling "
                         "ODE's coefficients are infinite there, so the term is undefined at its last step")
    return VPSchedule.from_alphas_cumprod(ac)


def prediction_from_scheduler(scheduler: Any) -> Prediction:
    """``"eps"`` for ``prediction_type="epsilon"``, ``"x0"`` for ``"sample"``; any other type
    (``"v_prediction"``) is a ``ValueError``."""
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"the contraction term supports prediction_type {sorted(PREDICTION_TYPES)}, "
                         f"not {kind!r}")
    return PREDICTION_TYPES[kind]


def times_from_timesteps(timesteps: Tensor, num_train_timesteps: int) -> Tensor:
    """Integer timesteps ``k [B]`` as times ``t = (k + 1) / T`` (float32)."""
    return (torch.as_tensor(timesteps).to(torch.float32) + 1.0) / num_train_timesteps


def timesteps_from_times(t: Tensor, num_train_timesteps: int) -> Tensor:
    """Times on the grid ``(k + 1) / T`` back to integer timesteps ``k`` (long)."""
    return (torch.as_tensor(t) * num_train_timesteps).round().long() - 1


class DiffusersDenoiser:
    """A ``diffusers`` model called as this library's ``net_fn(a_t, t, *cond)``: times become the
    scheduler's integer timesteps and the model's ``.sample`` output is returned.
    ``model(a_t, timesteps, *cond)`` must keep ``a_t``'s shape (``UNet1DModel`` takes
    ``[B, channels, length]``)."""

    def __init__(self, model: torch.nn.Module, num_train_timesteps: int) -> None:
        self.model, self.T = model, num_train_timesteps

    def __call__(self, a_t: Tensor, t: Tensor, *cond: Tensor) -> Tensor:
        out = self.model(a_t, timesteps_from_times(t, self.T), *cond)
        return out.sample if hasattr(out, "sample") else out
