"""The denoising (score-matching) loss, for eps- or x0-predicting networks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..capture import capturing
from .parameterization import Cond, NetFn, as_cond_tuple
from .schedule import Prediction, VPSchedule, check_prediction


@dataclass
class DenoisingOutput:
    """Per-sample loss ``[B]`` and the points ``(a_t, t)`` it was taken at, so a regulariser
    (e.g. :class:`cdp.contraction.ContractionRegularizer`) can reuse them."""

    loss: Tensor  # [B]
    a_t: Tensor  # [B, ...]
    t: Tensor  # [B]
    noise: Tensor  # [B, ...]
    pred: Tensor  # [B, ...] raw network output


def noisy_batch(
    x0: Tensor,
    schedule: VPSchedule,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Checked ``(t [B], noise [B, ...], a_t [B, ...])`` for clean actions ``x0 [B, ...]``."""
    if x0.ndim < 2:
        raise ValueError(f"x0 must be [B, ...] with at least 2 dims, got shape {tuple(x0.shape)}")
    if not capturing() and not torch.isfinite(x0).all():  # a host read: not while a graph records
        raise ValueError("x0 contains NaN or inf")
    B = x0.shape[0]
    if t is None:
        t = schedule.sample_t(B, num_steps=num_steps, device=x0.device, generator=generator)
    elif t.shape != (B,):
        raise ValueError(f"t must be [B] = [{B}], got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return t, noise, schedule.q_sample(x0, t, noise)


def regression_loss(pred: Tensor, x0: Tensor, noise: Tensor, prediction: Prediction) -> Tensor:
    """Per-sample ``mean((pred - target)^2)`` over action dims, target = noise or x0. ``[B]``."""
    if pred.shape != x0.shape:
        raise ValueError(f"net_fn output shape {tuple(pred.shape)} != action shape {tuple(x0.shape)}")
    target = noise if prediction == "eps" else x0
    return (pred - target).pow(2).flatten(1).mean(1)


def check_trainable_prediction(prediction: str) -> None:
    check_prediction(prediction)
    if prediction == "score":
        raise ValueError("prediction='score' has no bounded regression target; use 'eps' or 'x0'")


def denoising_loss(
    net_fn: NetFn,
    x0: Tensor,
    schedule: VPSchedule,
    prediction: Prediction = "eps",
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    cond: Cond = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> DenoisingOutput:
    """Epsilon matching ``|eps_theta(a_t, t) - eps|^2`` (or ``|x0_theta - x0|^2`` for an x0
    network), averaged over action dimensions, per sample.

    net_fn: ``(a_t, t, *cond) -> [B, ...]``. x0: clean actions ``[B, ...]``. cond: per-sample
    conditioning (states), a tensor or tuple of tensors ``[B, ...]``.
    t: ``[B]`` in (0, 1]; drawn by ``schedule.sample_t`` when omitted (``num_steps`` for
    discrete-time training). noise: ``[B, ...]`` standard normal.
    """
    check_trainable_prediction(prediction)
    t, noise, a_t = noisy_batch(x0, schedule, t, noise, num_steps, generator)
    pred = net_fn(a_t, t, *as_cond_tuple(cond, x0.shape[0]))
    return DenoisingOutput(loss=regression_loss(pred, x0, noise, prediction), a_t=a_t, t=t, noise=noise, pred=pred)
