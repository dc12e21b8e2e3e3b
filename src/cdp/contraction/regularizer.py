"""``ContractionRegularizer``: add CDP's term to any diffusion policy in a few lines.

    reg = ContractionRegularizer(schedule, prediction="eps")          # gamma = 0.1
    out = denoising_loss(net, actions, schedule, cond=obs)            # net(a_t, t, obs)
    loss = out.loss.mean() + reg(net, out.a_t, out.t, cond=obs)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..diffusion.parameterization import NetFn
from ..diffusion.schedule import Prediction, VPSchedule, check_prediction
from .eig import EIG_METHODS
from .loss import FORMS, Cond, as_cond_tuple, contraction_loss


@dataclass
class ContractionConfig:
    """Hyper-parameters of the contraction term (saved with every run).

    gamma: weight of the term (paper: 0.1). margin: hinge floor beta (None = no hinge).
    form / method / iters: see :func:`contraction_loss`. t_max: apply only where t < t_max.
    subbatch: use only the first ``subbatch`` samples of the (already shuffled) batch — the
    term is an average, so a sub-batch is an unbiased, cheaper estimate of it.
    """

    gamma: float = 0.1
    margin: float | None = 0.1
    form: str = "eig"
    method: str = "auto"
    iters: int = 4
    t_max: float | None = None
    subbatch: int | None = None
    exact_max_dim: int = 8
    probes: int = 4

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.method not in EIG_METHODS:
            raise ValueError(f"method must be one of {EIG_METHODS}, got {self.method!r}")
        if self.subbatch is not None and self.subbatch < 1:
            raise ValueError(f"subbatch must be >= 1 or None, got {self.subbatch!r}")
        if self.t_max is not None and not 0 < self.t_max <= 1:
            raise ValueError(f"t_max must be in (0, 1] or None, got {self.t_max!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ContractionRegularizer:
    """``gamma * mean_b L_c(a_t[b], t[b])`` for a user's denoiser ``net_fn(a_t, t)``."""

    def __init__(self, schedule: VPSchedule, prediction: Prediction = "eps",
                 config: ContractionConfig | None = None, **overrides) -> None:
        check_prediction(prediction)
        self.schedule, self.prediction = schedule, prediction
        cfg = asdict(config) if config is not None else {}
        cfg.update(overrides)
        self.config = ContractionConfig(**cfg)

    def per_sample(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """``L_c`` per sample, ``[min(B, subbatch)]``. ``net_fn(a_t, t, *cond)``."""
        c = self.config
        conds = as_cond_tuple(cond, a_t.shape[0])
        if c.subbatch is not None:
            a_t, t, conds = a_t[: c.subbatch], t[: c.subbatch], tuple(x[: c.subbatch] for x in conds)
        return contraction_loss(net_fn, a_t, t, self.schedule, self.prediction, c.margin, c.form,  # type: ignore[arg-type]
                                c.method, c.iters, cond=conds, t_max=c.t_max,  # type: ignore[arg-type]
                                exact_max_dim=c.exact_max_dim, probes=c.probes, generator=generator)

    def __call__(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """``gamma * mean(L_c)``, a scalar to add to the training loss."""
        if self.config.gamma == 0:
            return a_t.new_zeros(())
        return self.config.gamma * self.per_sample(net_fn, a_t, t, cond, generator).mean()
