"""Diffusion core: VP schedules, parameterisation conversions, the denoising loss, samplers."""

from .loss import DenoisingOutput, denoising_loss
from .parameterization import (
    NetFn,
    eps_to_score,
    eps_to_x0,
    predict_x0,
    score_to_eps,
    to_eps,
    to_x0,
    x0_to_eps,
)
from .samplers import SAMPLERS, ddim_draws, ddim_sample, ddpm_sample, dpm_solver_sample, ode_sample, sample, time_grid
from .schedule import PREDICTIONS, DiscreteView, Prediction, VPSchedule, broadcast_to

__all__ = [
    "VPSchedule", "DiscreteView", "Prediction", "PREDICTIONS", "broadcast_to",
    "NetFn", "eps_to_x0", "x0_to_eps", "eps_to_score", "score_to_eps", "to_eps", "to_x0", "predict_x0",
    "DenoisingOutput", "denoising_loss",
    "SAMPLERS", "time_grid", "ddim_draws", "ddpm_sample", "ddim_sample", "dpm_solver_sample", "ode_sample", "sample",
]
