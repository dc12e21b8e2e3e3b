"""DBC in its original form (Chen et al. 2023, "Diffusion Model-Augmented Behavioral Cloning"):
a *deterministic* policy trained by behaviour cloning plus a term from a frozen diffusion model
of the demonstrations.

Two stages inside one run:

1. for ``pretrain_steps`` steps, a conditional diffusion model ``eps_phi(a_t, t, s)`` over the
   action chunk (DiT backbone here, hence ``dbc-dit``) learns the demonstrations;
2. then ``eps_phi`` is frozen and the policy ``pi(s)`` (an MLP giving the whole chunk) minimises
   ``|pi(s) - a|^2 + lambda * max(0, l_phi(s, pi(s)) - l_phi(s, a))``, where ``l_phi`` is the
   denoising loss at the same ``(t, eps)`` draw for both actions: the policy's action is pushed to
   be at least as likely under the diffusion model as the expert's.

At deployment only ``pi`` runs: one forward pass per chunk, no sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..diffusion import VPSchedule, denoising_loss
from ..nets import DiT
from ..nets.mlp import mlp
from .policy import ChunkPolicy, PolicyConfig


@dataclass
class DBCConfig(PolicyConfig):
    hidden: int = 256
    depth: int = 3
    dm_weight: float = 1.0  # lambda
    pretrain_steps: int = 2000  # stage 1 (diffusion model) length, in training steps
    train_steps: int = 100  # T of the diffusion model's discrete cosine schedule
    dit_width: int = 64
    dit_depth: int = 4
    dit_heads: int = 4


class DBC(ChunkPolicy):
    policy_type = "dbc"
    config_class = DBCConfig

    def __init__(self, config: DBCConfig) -> None:
        super().__init__(config)
        c = config
        cond = c.n_obs_steps * c.obs_dim
        self.pi = nn.Sequential(*mlp(cond, c.horizon * c.action_dim, c.hidden, c.depth), nn.Tanh())
        self.dm = DiT(c.action_dim, cond, width=c.dit_width, depth=c.dit_depth, heads=c.dit_heads, max_horizon=c.horizon)
        self.schedule = VPSchedule.discrete_cosine(c.train_steps)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # stage clock, saved with the weights

    def _pi(self, cond: Tensor) -> Tensor:
        c = self.config
        return self.pi(cond).view(-1, c.horizon, c.action_dim)

    def compute_loss(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        c, cond, a = self.config, self.cond(obs), self.act_norm(actions)
        stage1 = int(self.updates) < c.pretrain_steps
        if self.training:
            self.updates += 1
        if stage1:
            dm = denoising_loss(self.dm, a, self.schedule, "eps", cond=cond, num_steps=c.train_steps).loss.mean()
            zero = torch.zeros((), device=dm.device)
            return {"loss": dm, "dm": dm, "bc": zero, "dm_gap": zero}
        self.dm.requires_grad_(False)
        pred = self._pi(cond)
        bc = (pred - a).pow(2).mean()
        t = self.schedule.sample_t(a.shape[0], num_steps=c.train_steps, device=a.device)
        noise = torch.randn_like(a)
        l_pi = denoising_loss(self.dm, pred, self.schedule, "eps", t=t, noise=noise, cond=cond).loss
        with torch.no_grad():
            l_expert = denoising_loss(self.dm, a, self.schedule, "eps", t=t, noise=noise, cond=cond).loss
        gap = (l_pi - l_expert).clamp_min(0).mean()
        return {"loss": bc + c.dm_weight * gap, "dm": torch.zeros((), device=bc.device), "bc": bc, "dm_gap": gap}

    @torch.no_grad()
    def predict_chunk(self, obs: Tensor) -> Tensor:
        return self.act_norm.inverse(self._pi(self.cond(obs)).clamp(-1, 1))
