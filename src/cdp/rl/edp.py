"""EDP (Kang et al. 2023) and DQL (Wang et al. 2023), with an optional contraction term:
CDP = EDP + gamma * L_c.

DQL is the same actor-critic with a different policy-improvement action: the full reverse
chain (5 DDPM steps, gradients through every step) instead of EDP's one-call approximation.

Per update, with a batch ``(s, a, r, s', d)`` (DESIGN.md §4):

  critic:  y = r + discount (1 - d) min_i Q'_i(s', a'),  a' ~ pi_ema(. | s') by DPM-Solver++
           L_Q = sum_i (Q_i(s, a) - y)^2
  actor:   a_t = alpha_t a + sigma_t eps,  a0_hat = x0(n_theta(a_t, t, s))   (action approximation:
           one network call, no sampling chain)
           L_pi = L_denoise - eta * Q_1(s, a0_hat) / mean|Q_1(s, a0_hat)|  [+ gamma * L_c(a_t, t, s)]

With ``critic="iql"`` (EDP's IQL variant) the critic is IQL's in-sample expectile critic and
the actor loss is the denoising loss weighted by ``exp(beta (Q(s, a) - V(s)))`` (capped at 100).

Evaluation draws ``n_candidates`` actions per state and picks one from
``softmax(temperature * min_i Q_i)`` (energy-based selection; temperature None = argmax).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..capture import set_lr
from ..contraction import ContractionConfig, ContractionRegularizer
from ..diffusion import VPSchedule, ddim_draws, denoising_loss, sample, to_x0
from ..diffusion.loss import noisy_batch
from ..nets import MLPDenoiser
from ..update import soft_update, zero_step
from .agent import Agent, draw_one
from .critics import TwinQ
from .iql import IQLCritic


@dataclass
class EDPConfig:
    """Defaults follow the official CDP runs (x0-prediction, cosine schedule with T = 50,
    DPM-Solver++ with 15 steps, Adam 3e-4, EMA 0.995 every 5 steps after step 1000) and
    DQL/EDP (discount 0.99, tau 0.005, eta 1.0)."""

    prediction: str = "x0"
    schedule_kind: str = "cosine"  # discrete cosine with T = diffusion_steps, or "linear" (beta 0.1 -> 10, DQL)
    diffusion_steps: int = 50  # T
    sampler: str = "dpm_solver++"
    sample_steps: int = 15
    q_action: str = "approx"  # EDP: a0_hat from one call; "chain": DQL, backprop through the sampler
    # "approx": the Q term's a0_hat from the denoising loss's own call ("shared", EDP's one call) or
    # from a draw (t, noise) and a call of its own ("separate", the official runs, whose BC loss draws apart)
    q_draw: str = "shared"
    q_clip: bool = True  # "approx": a0_hat clamped to the action box before the critic (official: raw)
    critic: str = "td3"  # "td3": TD targets with policy actions + Q term; "iql": in-sample critic + AWR weights
    iql_tau: float = 0.7
    awr_beta: float = 3.0
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005  # critic target soft update
    eta: float = 1.0  # weight of the Q term in the actor loss
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    grad_clip: float | None = None
    n_candidates: int = 100  # evaluation
    temperature: float | None = None  # None: argmax Q over candidates; else sample softmax(temperature * min Q)
    init_noise_scale: float = 1.0  # action selection starts from N(0, scale^2 I) (the official runs: 0.5)
    q_pair: str = "q1"  # actor's Q term: -Q1 / mean|Q1|, or "random": -Q_i / mean|Q_j|, (i, j) a random order each step
    lr_decay_steps: int | None = None  # cosine decay of both learning rates to 0 over this many updates
    target_every: int = 1  # the critic target moves towards the critic by tau every this many updates
    ema_warmup: str = "copy"  # before ema_start: "copy" the actor into its EMA, or "hold" the EMA's initial weights
    # the target and EMA averages follow update k (1-based) where (k - average_offset) % every == 0,
    # the EMA's from k - average_offset >= ema_start; the official runs count from 0: offset 1
    average_offset: int = 0
    hidden: int = 256
    contraction: ContractionConfig | None = None  # None: EDP; set: CDP
    schedule: VPSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "x0"):
            raise ValueError(f"prediction must be 'eps' or 'x0', got {self.prediction!r}")
        if self.critic not in ("td3", "iql"):
            raise ValueError(f"critic must be 'td3' or 'iql', got {self.critic!r}")
        if self.q_action not in ("approx", "chain"):
            raise ValueError(f"q_action must be 'approx' or 'chain', got {self.q_action!r}")
        if self.q_draw not in ("shared", "separate"):
            raise ValueError(f"q_draw must be 'shared' or 'separate', got {self.q_draw!r}")
        if self.average_offset < 0:
            raise ValueError(f"average_offset must be >= 0, got {self.average_offset}")
        if self.q_pair not in ("q1", "random"):
            raise ValueError(f"q_pair must be 'q1' or 'random', got {self.q_pair!r}")
        if self.ema_warmup not in ("copy", "hold"):
            raise ValueError(f"ema_warmup must be 'copy' or 'hold', got {self.ema_warmup!r}")
        if self.target_every < 1 or not 0 < self.tau <= 1 or not self.init_noise_scale > 0:
            raise ValueError("target_every must be >= 1, tau in (0, 1], init_noise_scale > 0")
        if self.schedule_kind == "cosine":
            self.schedule = VPSchedule.discrete_cosine(self.diffusion_steps)
        elif self.schedule_kind == "linear":
            self.schedule = VPSchedule(beta_min=0.1, beta_max=10.0)
        else:
            raise ValueError(f"schedule_kind must be 'cosine' or 'linear', got {self.schedule_kind!r}")

    @classmethod
    def dql(cls, **overrides) -> EDPConfig:
        """Diffusion-QL: eps-prediction, DQL's linear VP schedule with T = 5, ancestral DDPM
        sampling over all 5 steps, Q term through the whole chain, 50 candidates at evaluation."""
        kw = dict(prediction="eps", schedule_kind="linear", diffusion_steps=5, sampler="ddpm", sample_steps=5,
                  q_action="chain", n_candidates=50, ema_start=1000, grad_clip=None)
        return cls(**{**kw, **overrides})

    @classmethod
    def official(cls, steps: int, **overrides) -> EDPConfig:
        """The official CDP offline-RL runs' EDP (``scripts/cdp_rl.py`` with ``configs/edp``):
        cosine decay of both learning rates over the ``steps`` of the run, the Q term on a random
        ordering of the twins, at an unclipped a0_hat from a draw of its own, the critic target
        moved 0.995 of the way to the critic every 5 updates and the EMA held at its initial
        weights until step 1000 (both counted from 0), and action selection from noise scaled by
        0.5 with one of 100 candidates drawn from softmax(300 * min Q)."""
        kw = dict(lr_decay_steps=steps, q_pair="random", q_draw="separate", q_clip=False, target_every=5,
                  tau=0.995, ema_warmup="hold", average_offset=1, init_noise_scale=0.5, temperature=300.0,
                  n_candidates=100)
        return cls(**{**kw, **overrides})


class EDP(Agent):
    """Actor (diffusion policy), its EMA copy, twin critics and their targets."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: EDPConfig, device: str | torch.device = "cpu") -> None:
        self.cfg, self.act_dim, self.device = cfg, act_dim, torch.device(device)
        self.actor = MLPDenoiser(act_dim, obs_dim, hidden=cfg.hidden).to(self.device)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        if cfg.critic == "iql":
            self.iql = IQLCritic(obs_dim, act_dim, cfg.hidden, cfg.iql_tau, cfg.discount).to(self.device)
            self.critic, self.critic_target = self.iql.q, self.iql.q_target
            self.v_opt = torch.optim.Adam(self.iql.v.parameters(), lr=cfg.lr)
        else:
            self.critic = TwinQ(obs_dim, act_dim, cfg.hidden).to(self.device)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.reg = (ContractionRegularizer(cfg.schedule, cfg.prediction, cfg.contraction)  # type: ignore[arg-type]
                    if cfg.contraction is not None and cfg.contraction.gamma > 0 else None)
        self._swap = torch.zeros((), dtype=torch.bool, device=self.device)  # q_pair "random": this step's coin
        self.step = 0

    # ------------------------------------------------------------------ sampling
    def sample_actions(self, obs: Tensor, ema: bool = True, x_T: Tensor | None = None,
                       step_noise: Tensor | None = None) -> Tensor:
        """One action per state ``[B, act_dim]`` by the config's sampler, clipped to [-1, 1], from
        the starting noise ``x_T [B, act_dim]`` (default: drawn here, :meth:`draw_start`); a
        sampler that draws on the way (DDPM) takes ``step_noise [k, B, act_dim]`` where given
        (:meth:`draw_chain`), else draws it."""
        net = self.actor_ema if ema else self.actor
        if x_T is None:
            x_T = self.draw_start(obs.shape[0])
        extra = {} if step_noise is None else {"step_noise": step_noise}
        a = sample(lambda a, t: net(a, t, obs), x_T, self.cfg.schedule, self.cfg.sampler,  # type: ignore[arg-type]
                   self.cfg.sample_steps, self.cfg.prediction, clip_x0=1.0, generator=self.generator, **extra)  # type: ignore[arg-type]
        return a.clamp(-1, 1)

    def draw_start(self, batch: int) -> Tensor:
        """The sampler's starting noise ``[batch, act_dim]``: ``N(0, init_noise_scale^2 I)``."""
        return self.cfg.init_noise_scale * torch.randn(batch, self.act_dim, device=self.device, generator=self.generator)

    def draw_chain(self, batch: int) -> tuple[Tensor, Tensor | None]:
        """Every draw :meth:`sample_actions` makes for ``batch`` states, in its order: the start
        ``[batch, act_dim]`` and, for a sampler that draws on the way, the step noise ``[k, batch,
        act_dim]`` (None for one that draws only at its start: every sampler but DDPM, as
        :meth:`sample_actions` runs DDIM with ``eta = 0``)."""
        x_T = self.draw_start(batch)
        if self.cfg.sampler != "ddpm":
            return x_T, None
        k = ddim_draws(self.cfg.schedule, self.cfg.sample_steps, eta=1.0)
        if k == 0:
            return x_T, None
        return x_T, torch.randn(k, batch, self.act_dim, device=self.device, generator=self.generator)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """Energy-based selection over ``n_candidates`` samples per state: ``[B, act_dim]``."""
        B, N = obs.shape[0], self.cfg.n_candidates
        rep = obs.repeat_interleave(N, 0)
        cand = self.sample_actions(rep)
        q = self.critic_target.min_q(rep, cand).view(B, N)
        if self.cfg.temperature is None:
            idx = q.argmax(1)
        else:
            idx = draw_one(torch.softmax(self.cfg.temperature * q, 1), self.generator)
        return cand.view(B, N, -1)[torch.arange(B, device=obs.device), idx]

    # ------------------------------------------------------------------ update
    def prepare(self) -> None:
        if self.cfg.q_pair == "random":  # the official runs: either twin leads, a host coin per step
            self._swap.fill_(bool(torch.rand((), generator=self.host_generator) < 0.5))

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        if cfg.critic == "iql":  # in-sample: no policy actions in the critic's targets
            v_loss, critic_loss = self.iql_losses(batch)
            zero_step(self.v_opt, v_loss, cfg.grad_clip, list(self.iql.v.parameters()))
        else:
            critic_loss = self.critic_loss(batch)
        zero_step(self.critic_opt, critic_loss, cfg.grad_clip, list(self.critic.parameters()))
        actor_loss, parts = self.actor_loss(batch)
        zero_step(self.actor_opt, actor_loss, cfg.grad_clip, list(self.actor.parameters()))
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), **parts}

    def iql_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The IQL critic's value and Q losses (``critic="iql"``), both before either steps."""
        return self.iql.losses(batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["done"])

    def critic_loss(self, batch: dict[str, Tensor], x_T: Tensor | None = None,
                    step_noise: Tensor | None = None) -> Tensor:
        """The twin critics' TD loss (``critic="td3"``); ``x_T`` (and ``step_noise``): the draws of
        the target's policy actions (default: drawn; :meth:`draw_chain`)."""
        cfg = self.cfg
        s, a, r, s2, d = batch["obs"], batch["act"], batch["rew"], batch["next_obs"], batch["done"]
        with torch.no_grad():
            a2 = self.sample_actions(s2, x_T=x_T, step_noise=step_noise)
            y = r + cfg.discount * (1 - d) * self.critic_target.min_q(s2, a2)
        q1, q2 = self.critic(s, a)
        return (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()

    def actor_loss(self, batch: dict[str, Tensor], t: Tensor | None = None, noise: Tensor | None = None,
                   swap: Tensor | None = None, chain: tuple[Tensor, Tensor | None] | None = None,
                   q_draw: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The actor's loss and its parts (0-d, detached; with a Q term also ``q_pi``, the lead
        critic's mean Q at the actor's actions, a discounted sum of the rewards it trains on).
        ``t [B]``, ``noise [B, act_dim]``: the denoising loss's draws (default: drawn); ``swap``:
        this step's twin coin (default: the one :meth:`prepare` set); ``chain``: DQL's reverse
        chain's draws (:meth:`draw_chain`; default: drawn); ``q_draw``: ``(t, noise)`` of the Q
        term's own draw (``q_draw="separate"``; default: drawn after the denoising loss's)."""
        cfg = self.cfg
        s, a = batch["obs"], batch["act"]
        term_stats: dict[str, Tensor] = {}
        q_stats: dict[str, Tensor] = {}
        if self.reg is not None:
            out = self.reg.loss(self.actor, a, s, t=t, noise=noise, num_steps=cfg.diffusion_steps, generator=self.generator)
            denoise, contraction, term_stats = out.denoising, out.contraction, out.stats
        else:
            denoise = denoising_loss(self.actor, a, cfg.schedule, cfg.prediction, t=t, noise=noise, cond=s,  # type: ignore[arg-type]
                                     num_steps=cfg.diffusion_steps, generator=self.generator)
            contraction = torch.zeros((), device=s.device)
        if cfg.critic == "iql":  # advantage-weighted denoising: exp(beta (Q - V)), capped
            with torch.no_grad():
                w = torch.exp(cfg.awr_beta * (self.critic_target.min_q(s, a) - self.iql.value(s))).clamp(max=100.0)
            q_loss = torch.zeros((), device=s.device)
            actor_loss = (w * denoise.loss).mean() + contraction
        else:
            if cfg.q_action == "approx" and cfg.q_draw == "shared":  # EDP: the denoising loss's network call
                a0_hat = to_x0(denoise.pred, denoise.a_t, denoise.t, cfg.schedule, cfg.prediction)  # type: ignore[arg-type]
            elif cfg.q_action == "approx":  # a draw and a call of its own
                qt, _, qa_t = noisy_batch(a, cfg.schedule, *(q_draw or (None, None)), cfg.diffusion_steps, self.generator)
                a0_hat = to_x0(self.actor(qa_t, qt, s), qa_t, qt, cfg.schedule, cfg.prediction)  # type: ignore[arg-type]
            else:  # DQL: a full reverse chain with gradients
                x_T, step_noise = chain if chain is not None else (None, None)
                a0_hat = self.sample_actions(s, ema=False, x_T=x_T, step_noise=step_noise)
            if cfg.q_action == "approx" and cfg.q_clip:
                a0_hat = a0_hat.clamp(-1, 1)
            x = torch.cat([s, a0_hat], -1)
            q_pi = self.critic.q1(x).squeeze(-1)
            if cfg.q_pair == "q1":
                q_norm = q_pi
            else:  # lead and normaliser swap with the step's coin (a device flag: no host branch)
                swap = self._swap if swap is None else swap
                q_other = self.critic.q2(x).squeeze(-1)
                q_pi, q_norm = torch.where(swap, q_other, q_pi), torch.where(swap, q_pi, q_other)
            q_loss = -q_pi.mean() / q_norm.abs().mean().detach()
            actor_loss = denoise.loss.mean() + cfg.eta * q_loss + contraction
            q_stats["q_pi"] = q_pi.mean().detach()  # a diverging critic shows here
        return actor_loss, {"denoise_loss": denoise.loss.mean().detach(), "q_loss": q_loss.detach(),
                            "contraction": contraction.detach(), **q_stats,
                            **{f"contraction_{k}": v for k, v in term_stats.items()}}  # rows / active share / rate

    def advance(self) -> None:
        cfg = self.cfg
        self.step += 1
        if cfg.lr_decay_steps:  # a function of the step alone: a resumed run (even with a new budget) follows it
            frac = min(self.step, cfg.lr_decay_steps) / cfg.lr_decay_steps
            for opt in (self.actor_opt, self.critic_opt):
                set_lr(opt, cfg.lr * 0.5 * (1 + math.cos(math.pi * frac)))
        k = self.step - cfg.average_offset
        if k % cfg.target_every == 0:
            soft_update(self.critic_target, self.critic, cfg.tau)
        if k % cfg.ema_every == 0:
            if k >= cfg.ema_start:
                soft_update(self.actor_ema, self.actor, 1 - cfg.ema_decay)
            elif cfg.ema_warmup == "copy":
                soft_update(self.actor_ema, self.actor, 1.0)

    # ------------------------------------------------------------------ checkpoints
    def state_keys(self) -> list[str]:
        keys = ["actor", "actor_ema", "critic", "critic_target", "actor_opt", "critic_opt"]
        return keys + ["iql", "v_opt"] if self.cfg.critic == "iql" else keys
