"""IQL's in-sample critic (Kostrikov et al. 2022) and IDQL (Hansen-Estruch et al. 2023).

Critic, with no action ever drawn from the policy:
  V:  L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_i Q'_i(s, a) - V(s)      (expectile regression)
  Q:  L_Q = sum_i E[ (r + discount (1 - d) V(s') - Q_i(s, a))^2 ]

IDQL: the actor is a plain diffusion behaviour model (denoising loss only, optionally with the
contraction term); at evaluation it draws N candidates per state and resamples one with
probability proportional to the expectile weight ``|tau - 1(Q - V < 0)|``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..contraction import ContractionConfig, ContractionRegularizer
from ..diffusion import VPSchedule, denoising_loss, sample
from ..nets import MLPDenoiser
from ..update import soft_update, zero_step
from .agent import Agent, draw_one
from .critics import TwinQ, mlp


def expectile_loss(u: Tensor, tau: float) -> Tensor:
    """``mean(|tau - 1(u < 0)| u^2)``: minimised over a constant c, ``u = x - c`` gives the
    tau-expectile of x (tau = 0.5: the mean)."""
    w = torch.where(u < 0, 1 - tau, tau)
    return (w * u.pow(2)).mean()


class IQLCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, tau: float = 0.7, discount: float = 0.99,
                 polyak: float = 0.005) -> None:
        super().__init__()
        self.q = TwinQ(obs_dim, act_dim, hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = mlp(obs_dim, 1, hidden)
        self.tau, self.discount, self.polyak = tau, discount, polyak

    def value(self, obs: Tensor) -> Tensor:
        return self.v(obs).squeeze(-1)

    def losses(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            q_t = self.q_target.min_q(s, a)
            y = r + self.discount * (1 - d) * self.value(s2)
        v_loss = expectile_loss(q_t - self.value(s), self.tau)
        q1, q2 = self.q(s, a)
        return v_loss, (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()

    @torch.no_grad()
    def update_target(self) -> None:
        soft_update(self.q_target, self.q, self.polyak)


@dataclass
class IDQLConfig:
    prediction: str = "eps"
    diffusion_steps: int = 50
    sample_steps: int = 15
    lr: float = 3e-4
    tau: float = 0.7  # IQL expectile (locomotion)
    discount: float = 0.99
    n_candidates: int = 64
    hidden: int = 256
    contraction: ContractionConfig | None = None
    schedule: VPSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.schedule = VPSchedule.discrete_cosine(self.diffusion_steps)


class IDQL(Agent):
    def __init__(self, obs_dim: int, act_dim: int, cfg: IDQLConfig, device: str | torch.device = "cpu") -> None:
        self.cfg, self.act_dim, self.device = cfg, act_dim, torch.device(device)
        self.actor = MLPDenoiser(act_dim, obs_dim, hidden=cfg.hidden).to(self.device)
        self.critic = IQLCritic(obs_dim, act_dim, cfg.hidden, cfg.tau, cfg.discount).to(self.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.q_opt = torch.optim.Adam(self.critic.q.parameters(), lr=cfg.lr)
        self.v_opt = torch.optim.Adam(self.critic.v.parameters(), lr=cfg.lr)
        self.reg = (ContractionRegularizer(cfg.schedule, cfg.prediction, cfg.contraction)  # type: ignore[arg-type]
                    if cfg.contraction is not None and cfg.contraction.gamma > 0 else None)
        self.step = 0

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        v_loss, q_loss = self.critic_losses(batch)
        zero_step(self.v_opt, v_loss)
        zero_step(self.q_opt, q_loss)
        self.critic.update_target()
        actor_loss, parts = self.actor_loss(batch)
        zero_step(self.actor_opt, actor_loss)
        return {"v_loss": v_loss.detach(), "q_loss": q_loss.detach(), **parts}

    def critic_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """IQL's value and Q losses on ``batch`` (both computed before either network steps)."""
        return self.critic.losses(batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["done"])

    def actor_loss(self, batch: dict[str, Tensor], t: Tensor | None = None,
                   noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The behaviour model's loss (denoising, plus the term where set) and its parts (0-d,
        detached); ``t [B]``, ``noise [B, act_dim]``: the denoising loss's draws (default: drawn)."""
        cfg = self.cfg
        s, a = batch["obs"], batch["act"]
        if self.reg is not None:
            out = self.reg.loss(self.actor, a, s, t=t, noise=noise, num_steps=cfg.diffusion_steps,
                                generator=self.generator)
            denoise, contraction = out.denoising.loss.mean(), out.contraction
        else:
            denoise = denoising_loss(self.actor, a, cfg.schedule, cfg.prediction, t=t, noise=noise, cond=s,  # type: ignore[arg-type]
                                     num_steps=cfg.diffusion_steps, generator=self.generator).loss.mean()
            contraction = torch.zeros((), device=s.device)
        return denoise + contraction, {"denoise_loss": denoise.detach(), "contraction": contraction.detach()}

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        B, N = obs.shape[0], self.cfg.n_candidates
        rep = obs.repeat_interleave(N, 0)
        x_T = torch.randn(B * N, self.act_dim, device=obs.device, generator=self.generator)
        cand = sample(lambda x, t: self.actor(x, t, rep), x_T, self.cfg.schedule,
                      "dpm_solver++", self.cfg.sample_steps, self.cfg.prediction, clip_x0=1.0).clamp(-1, 1)  # type: ignore[arg-type]
        adv = (self.critic.q_target.min_q(rep, cand) - self.critic.value(rep)).view(B, N)
        w = torch.where(adv < 0, 1 - self.cfg.tau, self.cfg.tau)
        idx = draw_one(w / w.sum(1, keepdim=True), self.generator)
        return cand.view(B, N, -1)[torch.arange(B, device=obs.device), idx]

    def state_keys(self) -> list[str]:
        return ["actor", "critic", "actor_opt", "q_opt", "v_opt"]
