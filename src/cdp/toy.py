"""Gaussian mixtures whose diffused score, noise and clean-action predictors are exact.

Data ``a_0 ~ sum_k w_k N(mu_k, s_k^2 I)``. Under a VP schedule the marginal at time t is
``sum_k w_k N(alpha mu_k, v_k I)`` with ``v_k = alpha^2 s_k^2 + sigma^2``, so
``score = -sum_k r_k (a - alpha mu_k) / v_k`` (``r_k`` the posterior weights),
``eps = -sigma score`` and ``x0 = (a + sigma^2 score) / alpha`` (Tweedie). These make exact
references for samplers and for the contraction condition, and a two-mode toy task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .diffusion.parameterization import NetFn
from .diffusion.schedule import Prediction, VPSchedule, broadcast_to, check_prediction


@dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture. means ``[K, D]``, stds ``[K]``, weights ``[K]`` (summing to 1)."""

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        K = self.means.shape[0]
        if self.means.ndim != 2 or self.stds.shape != (K,) or self.weights.shape != (K,):
            raise ValueError("means must be [K, D], stds and weights [K]")
        if (self.stds <= 0).any() or (self.weights < 0).any() or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise ValueError("stds must be > 0 and weights non-negative, summing to 1")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        """``sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T``  ``[D, D]``."""
        m = self.mean()
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second = second + torch.eye(self.dim, dtype=torch.float64) * (self.weights @ self.stds**2)
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x [n, D] float32, component labels [n])``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return (self.means[k] + self.stds[k, None] * z).float(), k

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean for each row of ``x [n, D]``."""
        return torch.cdist(x.double(), self.means).argmin(1)

    # -------------------------------------------------------------- exact diffused quantities
    def score(self, a: Tensor, t: Tensor, schedule: VPSchedule) -> Tensor:
        """``grad_a log p_t(a)`` for ``a [B, D]``, ``t [B]`` (computed in float64)."""
        a64, t64 = a.double(), torch.as_tensor(t, dtype=torch.float64).expand(a.shape[0])
        al, sg = schedule.alpha(t64)[:, None], schedule.sigma(t64)[:, None]
        v = al**2 * self.stds**2 + sg**2  # [B, K]
        diff = a64[:, None, :] - al[:, :, None] * self.means  # [B, K, D]
        logp = torch.log(self.weights) - 0.5 * (diff**2).sum(-1) / v - 0.5 * self.dim * torch.log(2 * math.pi * v)
        r = torch.softmax(logp, dim=1)
        return (-(r / v)[:, :, None] * diff).sum(1).to(a.dtype)

    def eps(self, a: Tensor, t: Tensor, schedule: VPSchedule) -> Tensor:
        t = torch.as_tensor(t, dtype=a.dtype).expand(a.shape[0])
        return -broadcast_to(schedule.sigma(t), a) * self.score(a, t, schedule)

    def x0(self, a: Tensor, t: Tensor, schedule: VPSchedule) -> Tensor:
        t = torch.as_tensor(t, dtype=a.dtype).expand(a.shape[0])
        s2 = broadcast_to(schedule.sigma(t) ** 2, a)
        return (a + s2 * self.score(a, t, schedule)) / broadcast_to(schedule.alpha(t), a)

    def denoiser(self, schedule: VPSchedule, prediction: Prediction = "eps") -> NetFn:
        """The exact network ``n(a_t, t)`` of kind ``prediction``."""
        check_prediction(prediction)
        fn = {"eps": self.eps, "x0": self.x0, "score": self.score}[prediction]
        return lambda a, t: fn(a, t, schedule)


def two_mode_1d(weight: float = 0.7, separation: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Two 1-D modes at ``+-separation/2`` with weights ``(weight, 1 - weight)``."""
    return GaussianMixture(
        means=torch.tensor([[-separation / 2], [separation / 2]]),
        stds=torch.tensor([std, std]),
        weights=torch.tensor([weight, 1 - weight]),
    )


def two_mode_2d(weight: float = 0.7, separation: float = 1.6, std: float = 0.1) -> GaussianMixture:
    """Two 2-D modes at ``(+-separation/2, 0)``: the toy 'go left or go right' action."""
    return GaussianMixture(
        means=torch.tensor([[-separation / 2, 0.0], [separation / 2, 0.0]]),
        stds=torch.tensor([std, std]),
        weights=torch.tensor([weight, 1 - weight]),
    )
