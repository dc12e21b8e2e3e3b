"""Samplers for any denoiser ``model_fn(a_t [B, ...], t [B]) -> [B, ...]`` predicting the noise,
the clean action or the score (``prediction``).

All samplers integrate from ``t = 1`` (noise) to ``t = 0`` on a time grid of ``steps`` intervals;
the last step lands on the clean estimate. A discrete DDPM with T steps is ``steps = T`` on the
uniform grid (``t_i = i / T``). They do not switch off autograd: DQL back-propagates through the
chain. Wrap calls in ``torch.inference_mode()`` when sampling only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..capture import capturing
from .parameterization import NetFn, to_x0
from .schedule import Prediction, VPSchedule, check_prediction

SamplerName = Literal["ddpm", "ddim", "dpm_solver++", "ode"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm_solver++", "ode")


Spacing = Literal["uniform", "logsnr"]


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0, *, spacing: Spacing = "uniform",
              schedule: VPSchedule | None = None, t_min: float = 1e-3) -> list[float]:
    """Grid ``t_start = t_0 > t_1 > ... > t_steps = t_end``.

    ``uniform``: equal steps in t (a discrete DDPM with T steps is ``steps = T``).
    ``logsnr``: equal steps in ``lambda = log(alpha/sigma)`` from ``t_start`` down to ``t_min``,
    then the last step to ``t_end = 0`` (DPM-Solver's choice: small steps near the data).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (0.0 <= t_end < t_start <= 1.0):
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    if spacing == "uniform" or steps == 1:
        return [t_start + (t_end - t_start) * i / steps for i in range(steps + 1)]
    if spacing != "logsnr":
        raise ValueError(f"spacing must be 'uniform' or 'logsnr', got {spacing!r}")
    if schedule is None:
        raise ValueError("spacing='logsnr' needs the schedule")
    lo = max(t_end, t_min)
    if t_end > 0:  # all steps lambda-uniform down to t_end
        n, tail = steps, []
    else:  # lambda-uniform to t_min, then one step to 0
        n, tail = steps - 1, [0.0]
    host = dict(dtype=torch.float64, device="cpu")  # a table of python floats: computed on the host
    lam = torch.linspace(float(schedule.log_snr(torch.tensor(t_start, **host))),
                         float(schedule.log_snr(torch.tensor(lo, **host))), n + 1, **host)
    ts = schedule.inverse_log_snr(lam).tolist()
    ts[0], ts[-1] = t_start, lo
    return ts + tail


def _coeffs(schedule: VPSchedule, grid: list[float]) -> list[tuple[float, float]]:
    """(alpha, sigma) at each grid time, in float64, from one vectorised schedule call (per-step
    scalar calls cost more than the network on small batches)."""
    tt = torch.tensor(grid, dtype=torch.float64, device="cpu")
    return list(zip(schedule.alpha(tt).tolist(), schedule.sigma(tt).tolist()))


def _grid_and_coeffs(schedule: VPSchedule, steps: int, spacing: Spacing) -> tuple[list[float], list[tuple[float, float]]]:
    """The time grid from 1 to 0 and its (alpha, sigma) table, computed once per schedule and
    setting: a control loop samples thousands of times with the same ones."""
    key = (steps, spacing, schedule.kind, schedule.beta_min, schedule.beta_max, schedule.cosine_s,
           schedule.cosine_t_scale, schedule.log_alpha_knots)
    hit = schedule._grid_cache.get(key)
    if hit is None:
        grid = time_grid(steps, spacing=spacing, schedule=schedule)
        hit = schedule._grid_cache[key] = (grid, _coeffs(schedule, grid))
    return hit


def _x0(model_fn: NetFn, x: Tensor, t: float, schedule: VPSchedule, prediction: Prediction,
        clip_x0: float | None) -> Tensor:
    # one time for the whole batch, as a stride-0 view: networks may embed it once
    tb = torch.full((1,), t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    x0 = to_x0(model_fn(x, tb), x, tb, schedule, prediction)
    return x0.clamp(-clip_x0, clip_x0) if clip_x0 is not None else x0


def _check(x_T: Tensor, prediction: str) -> None:
    check_prediction(prediction)
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be [B, ...] with at least 2 dims, got shape {tuple(x_T.shape)}")
    if not capturing() and not torch.isfinite(x_T).all():  # a host read: not while a graph records
        raise ValueError("x_T contains NaN or inf")


def ddim_sample(
    model_fn: NetFn,
    x_T: Tensor,
    schedule: VPSchedule,
    steps: int = 50,
    prediction: Prediction = "eps",
    *,
    eta: float = 0.0,
    spacing: Spacing = "uniform",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    step_noise: Tensor | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """DDIM from ``x_T ~ N(0, I)``: ``eta = 0`` is the deterministic sampler, ``eta = 1`` is
    ancestral DDPM (the exact posterior ``q(a_s | a_t, a0_hat)`` on any time grid).

    One step ``t -> s < t`` with ``x0 = a0_hat(a_t)``, ``e = (a_t - alpha_t x0) / sigma_t``:
    ``a_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) e + c z``,
    ``c = eta * sigma_s * sqrt(1 - alpha_t^2 sigma_s^2 / (alpha_s^2 sigma_t^2))`` (the DDPM
    posterior standard deviation when ``eta = 1``).
    With ``clip_x0`` the clean estimate is clamped to ``[-clip_x0, clip_x0]`` (DDPM/DQL's
    ``clip_denoised``) and ``e`` recomputed from it, as DDPM does.
    ``step_noise [k, *x_T.shape]``: the ``z`` of the ``k = ddim_draws(...)`` steps with ``c > 0``,
    in order, instead of drawing them from ``generator`` (what the draws would have been, made
    beforehand: a vectorised pass over several seeds cannot draw from each seed's generator).
    """
    _check(x_T, prediction)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    grid, coeffs = _grid_and_coeffs(schedule, steps, spacing)
    cs = _ddim_noise_scales(coeffs, eta)
    draws = sum(c > 0 for c in cs)
    if step_noise is not None and tuple(step_noise.shape) != (draws, *x_T.shape):
        raise ValueError(f"step_noise must be [{draws}, *x_T.shape], got {tuple(step_noise.shape)}")
    x, traj, k = x_T, [x_T], 0
    for t, (a_t, s_t), (a_s, s_s), c in zip(grid[:-1], coeffs[:-1], coeffs[1:], cs):
        x0 = _x0(model_fn, x, t, schedule, prediction, clip_x0)
        e = (x - a_t * x0) / s_t
        x = a_s * x0 + math.sqrt(max(0.0, s_s**2 - c**2)) * e
        if c > 0:
            z = (torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator) if step_noise is None
                 else step_noise[k])
            x, k = x + c * z, k + 1
        traj.append(x)
    return (x, traj) if return_trajectory else x


def _ddim_noise_scales(coeffs: list[tuple[float, float]], eta: float) -> list[float]:
    """``c`` of each DDIM step (0 where the step draws nothing: ``eta = 0`` or the last step to
    ``sigma = 0``)."""
    out = []
    for (a_t, s_t), (a_s, s_s) in zip(coeffs[:-1], coeffs[1:]):
        c = 0.0
        if eta > 0 and s_s > 0:
            c = eta * s_s * math.sqrt(max(0.0, 1.0 - (a_t * s_s) ** 2 / (a_s * s_t) ** 2))
        out.append(c)
    return out


def ddim_draws(schedule: VPSchedule, steps: int = 50, *, eta: float = 0.0, spacing: Spacing = "uniform") -> int:
    """How many noise draws (each ``x_T``'s shape) :func:`ddim_sample` makes after its start."""
    return sum(c > 0 for c in _ddim_noise_scales(_grid_and_coeffs(schedule, steps, spacing)[1], eta))


def ddpm_sample(
    model_fn: NetFn,
    x_T: Tensor,
    schedule: VPSchedule,
    steps: int = 50,
    prediction: Prediction = "eps",
    *,
    spacing: Spacing = "uniform",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    step_noise: Tensor | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Ancestral DDPM sampling (DDIM with ``eta = 1``; ``step_noise`` as there)."""
    return ddim_sample(model_fn, x_T, schedule, steps, prediction, eta=1.0, spacing=spacing, clip_x0=clip_x0,
                       generator=generator, step_noise=step_noise, return_trajectory=return_trajectory)


def dpm_solver_sample(
    model_fn: NetFn,
    x_T: Tensor,
    schedule: VPSchedule,
    steps: int = 15,
    prediction: Prediction = "eps",
    *,
    order: int = 2,
    spacing: Spacing = "logsnr",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """DPM-Solver++ (data prediction) multistep, order 1 or 2 ("2M"), first order on the
    first and the last step. With ``h = lambda_s - lambda_t`` (``lambda = log(alpha/sigma)``):

    ``a_s = (sigma_s / sigma_t) a_t - alpha_s (e^{-h} - 1) D``, with ``D = x0(a_t)`` at first
    order and ``D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev``, ``r = h_prev / h`` at second order.
    ``e^{-h}`` is formed as ``(sigma_s alpha_t) / (alpha_s sigma_t)`` so the final step to
    ``t = 0`` (``lambda = inf``) is exact: it returns ``x0``. Deterministic: ``generator`` is
    accepted (one signature for every sampler) and unused.
    """
    _check(x_T, prediction)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    grid, coeffs = _grid_and_coeffs(schedule, steps, spacing)
    x, traj = x_T, [x_T]
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i, (t, (a_t, s_t), (a_s, s_s)) in enumerate(zip(grid[:-1], coeffs[:-1], coeffs[1:])):
        x0 = _x0(model_fn, x, t, schedule, prediction, clip_x0)
        exp_neg_h = (s_s * a_t) / (a_s * s_t)
        last = i == steps - 1
        if order == 1 or x0_prev is None or last:
            d = x0
        else:
            h = math.log(a_s / s_s) - math.log(a_t / s_t)
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (s_s / s_t) * x + a_s * (1.0 - exp_neg_h) * d
        if s_s > 0:
            h_prev = math.log(a_s / s_s) - math.log(a_t / s_t)
        x0_prev = x0
        traj.append(x)
    return (x, traj) if return_trajectory else x


def ode_sample(
    model_fn: NetFn,
    x_T: Tensor,
    schedule: VPSchedule,
    steps: int = 200,
    prediction: Prediction = "eps",
    *,
    t_end: float = 1e-3,
    spacing: Spacing = "uniform",
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Reference integrator (classic RK4) of the probability-flow ODE
    ``da/dtau = f a + h n(a)`` (see :meth:`VPSchedule.sampling_ode_coefficients`) from
    ``t = 1`` to ``t = t_end > 0`` (the field is singular at 0). Slow and accurate: for
    diagnostics such as trajectory separation, not for control loops. Deterministic:
    ``generator`` is accepted and unused.
    """
    _check(x_T, prediction)
    if not t_end > 0:
        raise ValueError(f"t_end must be > 0 for the ODE integrator, got {t_end}")
    grid = time_grid(steps, 1.0, t_end, spacing=spacing, schedule=schedule)

    def field(x: Tensor, t: float) -> Tensor:  # dx/dtau, tau = -t
        tb = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        f, h = schedule.sampling_ode_coefficients(tb, prediction)
        f, h = f.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)), h.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return f * x + h * model_fn(x, tb)

    x, traj = x_T, [x_T]
    for t, s in zip(grid[:-1], grid[1:]):
        dtau = t - s  # > 0: sampling time runs backwards in t
        k1 = field(x, t)
        k2 = field(x + 0.5 * dtau * k1, t - 0.5 * dtau)
        k3 = field(x + 0.5 * dtau * k2, t - 0.5 * dtau)
        k4 = field(x + dtau * k3, s)
        x = x + dtau / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        traj.append(x)
    return (x, traj) if return_trajectory else x


def sample(
    model_fn: NetFn,
    x_T: Tensor,
    schedule: VPSchedule,
    method: SamplerName = "dpm_solver++",
    steps: int = 15,
    prediction: Prediction = "eps",
    **kwargs,
) -> Tensor:
    """Dispatch by name: ``"ddpm" | "ddim" | "dpm_solver++" | "ode"``."""
    fns = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm_solver++": dpm_solver_sample, "ode": ode_sample}
    if method not in fns:
        raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
    return fns[method](model_fn, x_T, schedule, steps, prediction, **kwargs)  # type: ignore[operator]


__all__ = ["time_grid", "ddim_draws", "ddim_sample", "ddpm_sample", "dpm_solver_sample", "ode_sample", "sample",
           "SAMPLERS"]
