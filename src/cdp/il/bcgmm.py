"""BC-GMM (robomimic's BC with a Gaussian-mixture head): an MLP on the flattened, normalised
observation history gives a 5-component diagonal Gaussian mixture over the current action;
trained by maximum likelihood. At evaluation each component's std is set to ``eval_std``
(robomimic's ``low_noise_eval``): a mode is drawn by its weight and its mean is played."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from .policy import ChunkPolicy, PolicyConfig


@dataclass
class BCGMMConfig(PolicyConfig):
    horizon: int = 1
    n_action_steps: int = 1
    hidden: int = 512
    depth: int = 2
    modes: int = 5
    min_std: float = 1e-4
    eval_std: float | None = 1e-4  # None: sample with the learnt stds

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.horizon != 1 or self.n_action_steps != 1:
            raise ValueError("BC-GMM predicts one action per step: horizon = n_action_steps = 1")


class BCGMM(ChunkPolicy):
    policy_type = "bc_gmm"
    config_class = BCGMMConfig

    def __init__(self, config: BCGMMConfig) -> None:
        super().__init__(config)
        c = config
        layers: list[nn.Module] = []
        width = c.n_obs_steps * c.obs_dim
        for _ in range(c.depth):
            layers += [nn.Linear(width, c.hidden), nn.ReLU()]
            width = c.hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, c.modes * (2 * c.action_dim + 1))

    @property
    def action_start(self) -> int:
        return 0  # the single predicted action is the current step's

    def distribution(self, obs: Tensor, std: float | None = None) -> MixtureSameFamily:
        """The mixture over normalised actions for ``obs [B, To, obs_dim]``."""
        c = self.config
        out = self.head(self.trunk(self.cond(obs)))
        K, d = c.modes, c.action_dim
        mean, raw_std, logits = out[:, :K * d], out[:, K * d:2 * K * d], out[:, 2 * K * d:]
        mean = torch.tanh(mean).view(-1, K, d)
        scale = (F.softplus(raw_std) + c.min_std).view(-1, K, d) if std is None else torch.full_like(mean, std)
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mean, scale), 1))

    def compute_loss(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs ``[B, To, obs_dim]``, actions ``[B, 1, d]``: negative log-likelihood."""
        a = self.act_norm(actions[:, 0]).clamp(-1 + 1e-6, 1 - 1e-6)
        nll = -self.distribution(obs).log_prob(a).mean()
        return {"loss": nll, "nll": nll}

    @torch.no_grad()
    def predict_chunk(self, obs: Tensor) -> Tensor:
        a = self.distribution(obs, self.config.eval_std).sample().clamp(-1, 1)
        return self.act_norm.inverse(a)[:, None]
