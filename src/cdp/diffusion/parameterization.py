"""Conversions between what a denoising network predicts: noise ``eps``, clean action ``x0``
and score ``grad_a log p_t(a)``.

With ``a_t = alpha x0 + sigma eps``: ``x0 = (a_t - sigma eps) / alpha`` and
``score = -eps / sigma``. All functions take per-sample ``alpha, sigma: [B]`` (or scalars)
and tensors ``[B, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .schedule import Prediction, VPSchedule, broadcast_to, check_prediction

NetFn = Callable[..., Tensor]
"""A denoiser ``net_fn(a_t [B, ...], t [B], *cond) -> [B, ...]``; ``cond`` (e.g. states) is
passed explicitly where the library may take a subset of the batch (losses, regulariser) and
may be closed over elsewhere (samplers call ``model_fn(a_t, t)``)."""

Cond = Tensor | tuple[Tensor, ...] | None
"""Per-sample conditioning passed to a :data:`NetFn`: a tensor or tuple of tensors ``[B, ...]``."""


def as_cond_tuple(cond: Cond, B: int) -> tuple[Tensor, ...]:
    """Normalise ``cond`` to a tuple of ``[B, ...]`` tensors (checked)."""
    conds = () if cond is None else (cond,) if isinstance(cond, Tensor) else tuple(cond)
    for i, c in enumerate(conds):
        if not isinstance(c, Tensor) or c.ndim < 1 or c.shape[0] != B:
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"cond[{i}] must be a tensor [B = {B}, ...], got {got}")
    return conds


def eps_to_x0(eps: Tensor, a_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (a_t - broadcast_to(sigma, a_t) * eps) / broadcast_to(alpha, a_t)


def x0_to_eps(x0: Tensor, a_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (a_t - broadcast_to(alpha, a_t) * x0) / broadcast_to(sigma, a_t)


def eps_to_score(eps: Tensor, sigma: Tensor) -> Tensor:
    return -eps / broadcast_to(sigma, eps)


def score_to_eps(score: Tensor, sigma: Tensor) -> Tensor:
    return -broadcast_to(sigma, score) * score


def to_eps(out: Tensor, a_t: Tensor, t: Tensor, schedule: VPSchedule, prediction: Prediction) -> Tensor:
    """The noise implied by a network output ``out`` of kind ``prediction`` at ``(a_t, t)``."""
    check_prediction(prediction)
    if prediction == "eps":
        return out
    if prediction == "score":
        return score_to_eps(out, schedule.sigma(t))
    return x0_to_eps(out, a_t, schedule.alpha(t), schedule.sigma(t))


def to_x0(out: Tensor, a_t: Tensor, t: Tensor, schedule: VPSchedule, prediction: Prediction) -> Tensor:
    """The clean action implied by ``out`` (Tweedie's estimate ``E[a_0 | a_t]``)."""
    check_prediction(prediction)
    if prediction == "x0":
        return out
    return eps_to_x0(to_eps(out, a_t, t, schedule, prediction), a_t, schedule.alpha(t), schedule.sigma(t))


def predict_x0(net_fn: NetFn, a_t: Tensor, t: Tensor, schedule: VPSchedule, prediction: Prediction) -> Tensor:
    """EDP's action approximation: one network call gives ``a0_hat`` — the output itself for an
    x0 network, ``(a_t - sigma eps) / alpha`` for an eps network."""
    return to_x0(net_fn(a_t, t), a_t, t, schedule, prediction)
