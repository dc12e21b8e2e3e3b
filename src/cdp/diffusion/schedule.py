"""Variance-preserving (VP) diffusion schedules in continuous time.

Forward process: ``a_t = alpha(t) a_0 + sigma(t) eps`` with ``alpha^2 + sigma^2 = 1`` and
``t in [0, 1]`` (t = 0 is data, t = 1 is noise). ``beta(t) = -2 d log alpha / dt`` is the noise
rate of the forward SDE ``da = -beta/2 a dt + sqrt(beta) dW``.

A discrete schedule with T steps (DDPM, EDP, Diffusion Policy) is the same object: step
``i in {1..T}`` sits at ``t = i / T`` and ``alphas_cumprod[i] = alpha(i / T)^2``. Discrete
``betas`` given by a user are turned into a continuous schedule by interpolating ``log alpha``
linearly between those knots (:meth:`VPSchedule.from_betas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "x0", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "score")
KINDS: tuple[str, ...] = ("linear", "cosine", "discrete")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


@dataclass(frozen=True)
class DiscreteView:
    """The schedule at ``T`` equally spaced steps, indexed ``0..T`` (0 = data).

    ``t[i] = i / T``; ``alphas_cumprod[i] = alpha(t[i])^2`` (``alphas_cumprod[0] = 1``);
    ``betas[i - 1] = 1 - alphas_cumprod[i] / alphas_cumprod[i - 1]`` for ``i = 1..T``.
    """

    T: int
    t: Tensor  # [T + 1]
    alphas_cumprod: Tensor  # [T + 1]
    betas: Tensor  # [T]


@dataclass
class VPSchedule:
    """Continuous-time VP schedule.

    kind:
        ``"linear"``: ``beta(t) = beta_min + (beta_max - beta_min) t`` (0.1 -> 20 by default, as in
        score-SDE / DPM-Solver; DQL and EDP use the same form with beta_max = 10).
        ``"cosine"``: ``alpha(t) = cos(theta(t)) / cos(theta(0))``,
        ``theta(t) = (cosine_t_scale * t + s) / (1 + s) * pi / 2``. ``cosine_t_scale < 1`` keeps
        ``alpha(1)`` away from 0 (alpha(1) ~ 0.0084, log-SNR(1) ~ -4.8, close to the linear
        schedule's -5.0), where ``beta`` would otherwise be infinite.
        ``"discrete"``: ``log alpha`` interpolated linearly between knots ``t = i / T``; build it
        with :meth:`from_betas` / :meth:`from_alphas_cumprod` / :meth:`discrete_cosine`.
    """

    kind: Literal["linear", "cosine", "discrete"] = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    cosine_t_scale: float = 0.9946
    log_alpha_knots: tuple[float, ...] | None = None  # discrete only: log alpha(i/T), i = 0..T
    _knots: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    # samplers memoise their time grids and (alpha, sigma) tables here, keyed by every parameter;
    # the discrete knots are kept here per device and dtype
    _grid_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "linear" and not (0 < self.beta_min <= self.beta_max):
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")
        if self.kind == "cosine" and not (0 < self.cosine_t_scale < 1 and self.cosine_s > 0):
            raise ValueError("cosine schedule needs 0 < cosine_t_scale < 1 and cosine_s > 0")
        if self.kind == "discrete":
            if self.log_alpha_knots is None or len(self.log_alpha_knots) < 2:
                raise ValueError("a discrete schedule needs log_alpha_knots for t = i/T, i = 0..T")
            knots = torch.tensor(self.log_alpha_knots, dtype=torch.float64)
            if not torch.isfinite(knots).all() or knots[0] != 0 or (knots.diff() >= 0).any():
                raise ValueError(
                    "log_alpha_knots must be finite, start at 0 and strictly decrease "
                    "(every beta in (0, 1))"
                )
            self._knots = knots

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> VPSchedule:
        """Discrete schedule from ``alphas_cumprod[i]``, ``i = 1..T`` (length T, without i = 0)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 1 or not torch.isfinite(ac).all() or (ac <= 0).any() or (ac >= 1).any():
            raise ValueError("alphas_cumprod must be finite and in (0, 1)")
        knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(ac)])
        return cls(kind="discrete", log_alpha_knots=tuple(knots.tolist()))

    @classmethod
    def from_betas(cls, betas: Tensor) -> VPSchedule:
        """Discrete schedule from per-step ``betas`` (length T), as DDPM defines them."""
        b = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if b.numel() < 1 or not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ValueError("betas must be finite and in (0, 1)")
        return cls.from_alphas_cumprod(torch.cumprod(1.0 - b, 0))

    @classmethod
    def discrete_cosine(cls, T: int, s: float = 0.008, max_beta: float = 0.999) -> VPSchedule:
        """Improved-DDPM cosine schedule with T steps (``squaredcos_cap_v2``), betas capped."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        i = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls.from_betas(betas)

    # ------------------------------------------------------------------ core functions
    def log_alpha(self, t: Tensor) -> Tensor:
        t = _tensor(t)
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        if self.kind == "cosine":
            theta0 = self.cosine_s / (1 + self.cosine_s) * math.pi / 2
            return torch.log(torch.cos(self._theta(t))) - math.log(math.cos(theta0))
        knots = self._knots_like(t)
        T = knots.numel() - 1
        u = t * T
        idx = u.floor().clamp(0, T - 1).long()
        frac = u - idx.to(t.dtype)
        return torch.lerp(knots[idx], knots[idx + 1], frac)

    def beta(self, t: Tensor) -> Tensor:
        t = _tensor(t)
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        if self.kind == "cosine":
            return torch.tan(self._theta(t)) * self.cosine_t_scale * math.pi / (1 + self.cosine_s)
        knots = self._knots_like(t)
        T = knots.numel() - 1
        idx = (t * T).floor().clamp(0, T - 1).long()
        return -2.0 * T * (knots[idx + 1] - knots[idx])

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        # sqrt(1 - alpha^2) via expm1: exact to the last digit at small t.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha / sigma)``, decreasing in t (DPM-Solver's half log-SNR)."""
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def inverse_log_snr(self, lam: Tensor, iters: int = 80) -> Tensor:
        """t with ``log_snr(t) = lam``, by bisection on [0, 1] (float64)."""
        lam = _tensor(lam).to(torch.float64)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too little noise: move right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # ------------------------------------------------------------------ derived
    def sampling_ode_coefficients(self, t: Tensor, prediction: Prediction = "eps") -> tuple[Tensor, Tensor]:
        """``(f, h)`` with the probability-flow ODE in sampling time ``tau = -t`` written as
        ``da/dtau = f(t) a + h(t) n(a, t)`` for a network ``n`` predicting ``prediction``:

        ====== ============================== ===============================
        n      f                              h
        ====== ============================== ===============================
        eps    +beta/2                        -beta / (2 sigma)
        x0     -beta alpha^2 / (2 sigma^2)    +beta alpha / (2 sigma^2)
        score  +beta/2                        +beta/2
        ====== ============================== ===============================
        """
        check_prediction(prediction)
        t = _tensor(t)
        b = self.beta(t)
        if prediction == "eps":
            return 0.5 * b, -0.5 * b / self.sigma(t)
        if prediction == "score":
            return 0.5 * b, 0.5 * b
        a, s2 = self.alpha(t), -torch.expm1(2.0 * self.log_alpha(t))
        return -0.5 * b * a**2 / s2, 0.5 * b * a / s2

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``a_t = alpha(t) x0 + sigma(t) noise`` with ``t: [B]`` broadcast over ``x0: [B, ...]``."""
        a, s = broadcast_to(self.alpha(t), x0), broadcast_to(self.sigma(t), x0)
        return a * x0 + s * noise

    def sample_t(
        self,
        batch: int,
        *,
        num_steps: int | None = None,
        t_min: float = 1e-3,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training times ``[batch]``: uniform on ``[t_min, 1]``, or ``i / num_steps`` with
        ``i`` uniform on ``{1..num_steps}`` for discrete-time training."""
        if num_steps is not None:
            if num_steps < 1:
                raise ValueError(f"num_steps must be >= 1, got {num_steps}")
            i = torch.randint(1, num_steps + 1, (batch,), device=device, generator=generator)
            return i.float() / num_steps
        return t_min + (1 - t_min) * torch.rand(batch, device=device, generator=generator)

    def discretize(self, T: int) -> DiscreteView:
        """The discrete-time view with T steps (T = 5 ... 1000 as DDPM/EDP/Diffusion Policy use)."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        t = torch.arange(T + 1, dtype=torch.float64) / T
        ac = torch.exp(2.0 * self.log_alpha(t))
        return DiscreteView(T=T, t=t, alphas_cumprod=ac, betas=1.0 - ac[1:] / ac[:-1])

    # ------------------------------------------------------------------ helpers
    def _theta(self, t: Tensor) -> Tensor:
        return (self.cosine_t_scale * t + self.cosine_s) / (1 + self.cosine_s) * math.pi / 2

    def _knots_like(self, t: Tensor) -> Tensor:
        """The knots on ``t``'s device and dtype, copied there once (a host-to-GPU copy per call
        would wait for the GPU, and cannot run inside a CUDA graph)."""
        assert self._knots is not None
        dtype = t.dtype if t.is_floating_point() else torch.float32
        key = ("knots", t.device, dtype)
        hit = self._grid_cache.get(key)
        if hit is None:
            hit = self._grid_cache[key] = self._knots.to(device=t.device, dtype=dtype)
        return hit


def _tensor(t: Tensor | float) -> Tensor:
    """``t`` as a tensor, a tensor left where it is (``torch.as_tensor`` would move it to the
    default device a ``with torch.device(...)`` block sets)."""
    return t if isinstance(t, Tensor) else torch.as_tensor(t)


def broadcast_to(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``[B]`` (or scalar) to broadcast against ``x: [B, ...]``."""
    c = c.to(dtype=x.dtype, device=x.device) if isinstance(c, Tensor) else torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))
