"""Seeds of one offline-RL config as one vectorised model: every network's weights stacked along
a leading seed axis, and each update computed once for all seeds under ``torch.func.vmap``.

It gives what the seeds give trained apart, to float rounding (a batched matrix product may sum
in another order):

- every seed draws from its own generators, the draws a lone update makes in the order it makes
  them (the twin coin, the critic target's sampler draws, the denoising loss's times and noise,
  DQL's reverse chain's draws); they are drawn before the vectorised pass and handed to it;
- under ``vmap`` every mean is the seed's own (the losses, the Q normaliser, the window's mean);
- Adam is elementwise, so one Adam over stacked weights is N Adams, and a gradient clip acts on
  each seed by that seed's own norm; the step counter, learning rates and target / EMA averages
  are each agent's own.

The agents stay whole: their parameters and optimiser states are views into the stacks, so
acting, evaluation, checkpoints and records go through each agent as in a lone run
(:func:`cdp.rl.ensemble.train_ensemble` with ``stacked=True``).

Every algorithm stacks: BC (:class:`StackedBC`), EDP / CDP / DQL with either critic
(:class:`StackedEDP`) and IDQL (:class:`StackedIDQL`); :func:`stack` picks the class. What it takes
(:func:`stack_supported` says why not): one config, the term (if any) by the exact eigenvalue on
the network's own products, and agents at the same step with their own generators.
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..capture import GraphedUpdate, graphs_available, set_lr
from ..contraction.eig import resolve_method
from ..diffusion.loss import noisy_batch
from ..update import Update
from .agent import Agent
from .bc import BC
from .edp import EDP
from .iql import IDQL


def stack_supported(agents: list) -> str | None:
    """Why these agents cannot be stacked (None: they can)."""
    if not agents:
        return "no agents"
    a0 = agents[0]
    if type(a0) not in STACKED or any(type(a) is not type(a0) for a in agents):
        return "the agents must be of one algorithm: BC, EDP / CDP / DQL or IDQL"
    reg = getattr(a0, "reg", None)
    if reg is not None:
        c = reg.config
        if c.form != "eig" or resolve_method(c.method, a0.act_dim, c.exact_max_dim) != "exact" or c.products != "native":
            return "the term stacks with the exact eigenvalue on the network's own products alone"
    if any(_settings(a.cfg) != _settings(a0.cfg) or getattr(a, "act_dim", None) != getattr(a0, "act_dim", None)
           for a in agents):
        return "the agents' configs differ"
    if len({a.step for a in agents}) > 1:
        return f"the agents are at different steps {[a.step for a in agents]}"
    if any(a.generator is None for a in agents) or len({id(a.generator) for a in agents}) < len(agents):
        return "every agent needs its own generator (Update.own_generators)"
    if len({a.device for a in agents}) > 1:
        return "the agents live on different devices"
    return None


def stack(agents: list[Agent], graphs: bool = False) -> StackedAgents:
    """The agents (one algorithm, one config, several seeds) as one vectorised model; a
    ``ValueError`` saying why where they do not stack (:func:`stack_supported`)."""
    cls = STACKED.get(type(agents[0])) if agents else None
    if cls is None:
        raise ValueError(f"these agents cannot be stacked: {stack_supported(agents)}")
    return cls(agents, graphs)


def _settings(cfg) -> dict:
    """A config's own fields (what it was made with; the schedule derives from them)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


class _Losses(nn.Module):
    """One agent's loss methods as a module whose parameters ``functional_call`` can swap for
    one seed's slice of the stacks (the agent's own code runs on the seed's weights)."""

    def __init__(self, agent: Agent, parts: dict[str, str]) -> None:
        super().__init__()
        for name, path in parts.items():
            self.add_module(name, attrgetter(path)(agent))
        self.agent = [agent]  # a list: not a submodule

    def forward(self, which: str, *args):
        return getattr(self.agent[0], which)(*args)


class StackedAgents(Update):
    """N agents of one algorithm and config (several seeds) updated as one vectorised model.

    ``update(batches)`` with one batch per agent (each ``{"obs", "act", "rew", "next_obs",
    "done"}`` of ``[B, ...]``) returns each agent's losses as the agent's own ``update`` returns
    them. The agents' parameters and optimiser states become views into the stacks: keep using
    the agents for acting, checkpoints and records, but do not load a state into one while stacked
    (its optimiser state would stop being a view).

    It is an :class:`cdp.update.Update` over the stacked batch (``[N, B, ...]``): ``prepare``
    is the agents' host-side choices, ``compute`` draws each seed's noise from its own generator
    and runs the vectorised passes, ``advance`` moves every agent on. So with ``graphs=True``
    (agents on a CUDA device) the whole N-seed update is recorded once as a CUDA graph and
    replayed (:class:`cdp.capture.GraphedUpdate`), each seed's generator registered with it.

    Subclasses name the networks stacked (``parts``: a name -> the agent's attribute path), the
    optimisers (attribute -> the part it steps) and write :meth:`compute`."""

    def parts(self, agent: Agent) -> dict[str, str]:
        raise NotImplementedError

    def optimizer_parts(self, agent: Agent) -> dict[str, str]:
        raise NotImplementedError

    def __init__(self, agents: list, graphs: bool = False) -> None:
        why = stack_supported(agents)
        if why is None and STACKED[type(agents[0])] is not type(self):
            why = f"{type(self).__name__} stacks {type(self).__name__.removeprefix('Stacked')}, not {type(agents[0]).__name__}"
        if why is not None:
            raise ValueError(f"these agents cannot be stacked: {why}")
        if graphs and not graphs_available(agents[0].device):  # before the agents' weights become views
            raise ValueError(f"graphs=True needs agents on a CUDA device, not {agents[0].device}")
        self.agents, self.cfg = agents, agents[0].cfg
        self.device, self.step = agents[0].device, agents[0].step
        self.clip = getattr(self.cfg, "grad_clip", None)
        parts, opt_parts = self.parts(agents[0]), self.optimizer_parts(agents[0])
        self.params: dict[str, dict[str, Tensor]] = {
            name: _stack_module([attrgetter(path)(a) for a in agents]) for name, path in parts.items()}
        self.opts = {opt: _stack_adam([getattr(a, opt) for a in agents], [attrgetter(parts[part])(a) for a in agents],
                                      self.params[part]) for opt, part in opt_parts.items()}
        self.losses = _Losses(agents[0], parts)
        self._graphed: GraphedUpdate | None = None
        if graphs:
            self._graphed = GraphedUpdate(self)  # makes the stacked optimisers capturable (step counters move)
            for opt_name, part in opt_parts.items():  # so the agents' states view the moved counters
                _share_adam_state(self.opts[opt_name], [getattr(a, opt_name) for a in agents],
                                  [attrgetter(parts[part])(a) for a in agents])

    def generators(self) -> list[torch.Generator]:
        return [a.generator for a in self.agents]  # stack_supported: each agent has its own

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.opts.values())

    def _named(self, *parts: str, live: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """The stacks of ``parts`` (default: all) under :class:`_Losses`'s parameter names, those
        not ``live`` (default: all live) detached."""
        return {f"{part}.{k}": (v if live is None or part in live else v.detach())
                for part in (parts or self.params) for k, v in self.params[part].items()}

    def _call(self, which: str, params: dict[str, Tensor], *args):
        """The agents' method ``which`` over the seeds: each seed's slice of ``params`` and of
        every argument that is not None."""
        call = self.losses
        return _over_seeds(lambda p, *a: functional_call(call, p, (which, *a)), params, *args)

    def update(self, batches: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:  # type: ignore[override]
        if len(batches) != len(self.agents):
            raise ValueError(f"{len(self.agents)} agents need {len(self.agents)} batches, got {len(batches)}")
        batch = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
        losses = self._graphed(batch) if self._graphed is not None else super().update(batch)
        return [{k: v[i] for k, v in losses.items()} for i in range(len(self.agents))]

    def prepare(self) -> None:
        for agent in self.agents:  # host-side choices (EDP's twin coin)
            agent.prepare()

    def _step(self, *steps: tuple[str, Tensor]) -> None:
        """One step of each named stacked optimiser on the seeds' losses ``[N]``, the losses'
        gradients taken in one backward pass (each loss reaches only its own optimiser's
        parameters), each seed's gradient clipped by its own norm as a lone update clips it.
        The seeds share no weight, so the gradient of their losses' sum is each seed's own."""
        opts = [self.opts[name] for name, _ in steps]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        sum(losses.sum() for _, losses in steps).backward()  # type: ignore[union-attr]
        for opt in opts:
            if self.clip is not None:
                clip_per_seed_(opt.param_groups[0]["params"], self.clip)
            opt.step()

    def _denoising_draws(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Each agent's denoising-loss draws (``t [N, B]``, ``noise [N, B, act_dim]``) from its own
        generator."""
        cfg, ts, noises = self.cfg, [], []
        for i, agent in enumerate(self.agents):
            t, noise, _ = noisy_batch(batch["act"][i], cfg.schedule, None, None, cfg.diffusion_steps, agent.generator)
            ts.append(t)
            noises.append(noise)
        return torch.stack(ts), torch.stack(noises)

    def advance(self) -> None:
        for agent in self.agents:  # step counters, learning-rate schedules, target and EMA averages
            agent.advance()
        for opt_name, opt in self.opts.items():  # the schedule the agents just set
            set_lr(opt, float(getattr(self.agents[0], opt_name).param_groups[0]["lr"]))
        self.step = self.agents[0].step


class StackedBC(StackedAgents):
    """BC's seeds stacked: one regression loss per seed."""

    def parts(self, agent: BC) -> dict[str, str]:  # type: ignore[override]
        return {"policy": "policy"}

    def optimizer_parts(self, agent: BC) -> dict[str, str]:  # type: ignore[override]
        return {"opt": "policy"}

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = self._call("loss", self._named(), batch)
        self._step(("opt", loss))
        return {"bc_loss": loss.detach()}


class StackedEDP(StackedAgents):
    """EDP / CDP / DQL seeds stacked, with the TD3-style critic or IQL's."""

    def parts(self, agent: EDP) -> dict[str, str]:  # type: ignore[override]
        parts = {"actor": "actor", "actor_ema": "actor_ema", "critic": "critic", "critic_target": "critic_target"}
        return parts | {"v": "iql.v"} if agent.cfg.critic == "iql" else parts

    def optimizer_parts(self, agent: EDP) -> dict[str, str]:  # type: ignore[override]
        opts = {"actor_opt": "actor", "critic_opt": "critic"}
        return opts | {"v_opt": "v"} if agent.cfg.critic == "iql" else opts

    def draws(self, batch: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """Each agent's device draws for one update from its own generator, in a lone update's
        order (the TD3 critic target's sampler draws, the denoising loss's t and noise, for DQL's
        chain the actor's sampler draws, for ``q_draw="separate"`` the Q term's t and noise), with
        its twin coin, stacked ``[N, ...]``; what a
        config does not draw is None. (Each agent draws from its own generator, so only the order
        within an agent matters.)"""
        cfg, none = self.cfg, (None, None)
        x_T, z = self._chain_draws(batch["next_obs"].shape[1]) if cfg.critic == "td3" else none
        t, noise = self._denoising_draws(batch)
        chain_x_T, chain_z = (self._chain_draws(batch["obs"].shape[1]) if cfg.critic == "td3" and cfg.q_action == "chain"
                              else none)
        q_t, q_noise = (self._denoising_draws(batch) if cfg.critic == "td3" and cfg.q_action == "approx"
                        and cfg.q_draw == "separate" else none)
        return {"x_T": x_T, "z": z, "t": t, "noise": noise, "chain_x_T": chain_x_T, "chain_z": chain_z,
                "q_t": q_t, "q_noise": q_noise, "swap": torch.stack([a._swap for a in self.agents])}

    def _chain_draws(self, states: int) -> tuple[Tensor, Tensor | None]:
        """Each agent's sampler draws for ``states`` states (:meth:`EDP.draw_chain`), stacked."""
        starts, steps = zip(*(a.draw_chain(states) for a in self.agents))
        return torch.stack(starts), None if steps[0] is None else torch.stack(steps)

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        d = self.draws(batch)
        if self.cfg.critic == "iql":  # the value and Q losses both before either steps, as alone
            v_loss, critic_loss = self._call("iql_losses", self._named("critic", "critic_target", "v"), batch)
            self._step(("v_opt", v_loss), ("critic_opt", critic_loss))
        else:
            critic_loss = self._call("critic_loss", self._named("critic", "critic_target", "actor_ema"),
                                     batch, d["x_T"], d["z"])
            self._step(("critic_opt", critic_loss))
        chain = None if d["chain_x_T"] is None else (d["chain_x_T"], d["chain_z"])
        q_draw = None if d["q_t"] is None else (d["q_t"], d["q_noise"])
        actor_loss, parts = self._call("actor_loss", self._named(live=("actor",)), batch, d["t"], d["noise"],
                                       d["swap"], chain, q_draw)
        self._step(("actor_opt", actor_loss))
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), **parts}


class StackedIDQL(StackedAgents):
    """IDQL's seeds stacked: IQL's critic, its target moved after the critic's step, then the
    behaviour model."""

    def parts(self, agent: IDQL) -> dict[str, str]:  # type: ignore[override]
        return {"actor": "actor", "q": "critic.q", "q_target": "critic.q_target", "v": "critic.v"}

    def optimizer_parts(self, agent: IDQL) -> dict[str, str]:  # type: ignore[override]
        return {"actor_opt": "actor", "q_opt": "q", "v_opt": "v"}

    def compute(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        v_loss, q_loss = self._call("critic_losses", self._named("q", "q_target", "v"), batch)
        self._step(("v_opt", v_loss), ("q_opt", q_loss))
        for agent in self.agents:  # each target's average, into its slice of the stack
            agent.critic.update_target()
        t, noise = self._denoising_draws(batch)
        actor_loss, parts = self._call("actor_loss", self._named("actor"), batch, t, noise)
        self._step(("actor_opt", actor_loss))
        return {"v_loss": v_loss.detach(), "q_loss": q_loss.detach(), **parts}


STACKED: dict[type, type[StackedAgents]] = {BC: StackedBC, EDP: StackedEDP, IDQL: StackedIDQL}


def _over_seeds(fn, *args):
    """``vmap(fn)`` over the leading seed axis of every argument that is not None."""
    return vmap(fn, in_dims=tuple(None if a is None else 0 for a in args))(*args)


@torch.no_grad()
def clip_per_seed_(stacks: list[Tensor], max_norm: float) -> Tensor:
    """:func:`torch.nn.utils.clip_grad_norm_` for each seed of stacked parameters ``[N, ...]``:
    seed ``i``'s gradients are scaled by ``min(1, max_norm / (||g_i|| + 1e-6))``, ``||g_i||`` the
    2-norm over all of its gradients (torch's formula). Returns the norms ``[N]``. No host read,
    so a CUDA graph can record it."""
    grads = [p.grad for p in stacks if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *[1] * (g.ndim - 1)).to(g.dtype))
    return norms


@torch.no_grad()
def _stack_module(modules: list[nn.Module]) -> dict[str, Tensor]:
    """The modules' parameters and buffers stacked ``[N, ...]``; each module's own tensors become
    views into the stacks (so they see every update, and updates through them land in it)."""
    stacks: dict[str, Tensor] = {}
    for name, p in modules[0].named_parameters():
        s = torch.stack([m.get_parameter(name).detach() for m in modules])
        for i, m in enumerate(modules):
            m.get_parameter(name).data = s[i]
        stacks[name] = s.requires_grad_(p.requires_grad)
    for name, _ in modules[0].named_buffers():
        s = torch.stack([m.get_buffer(name) for m in modules])
        for i, m in enumerate(modules):
            m.get_buffer(name).data = s[i]
        stacks[name] = s
    return stacks


def _share_adam_state(stacked: torch.optim.Optimizer, opts: list[torch.optim.Optimizer],
                      modules: list[nn.Module]) -> None:
    """Point each agent's Adam state at its slice of the stacked one (again after
    :func:`cdp.capture.make_capturable` replaced the stacked step counters)."""
    for n, stack in zip([n for n, _ in modules[0].named_parameters()], stacked.param_groups[0]["params"]):
        st = stacked.state[stack]
        for i, (o, m) in enumerate(zip(opts, modules)):
            o.state[m.get_parameter(n)] = {"step": st["step"], "exp_avg": st["exp_avg"][i],
                                           "exp_avg_sq": st["exp_avg_sq"][i]}


@torch.no_grad()
def _stack_adam(opts: list[torch.optim.Optimizer], modules: list[nn.Module],
                stacks: dict[str, Tensor]) -> torch.optim.Optimizer:
    """One Adam over the stacked parameters with the agents' settings and state; each agent's
    state becomes views into it (its checkpoints stay its own)."""
    group = {k: v for k, v in opts[0].param_groups[0].items() if k != "params"}
    names = [n for n, _ in modules[0].named_parameters()]
    opt = torch.optim.Adam([stacks[n] for n in names], **group)
    for n in names:
        own = [m.get_parameter(n) for m in modules]
        states = [o.state.get(p, {}) for o, p in zip(opts, own)]
        if all(states):
            if len({float(s["step"]) for s in states}) > 1:
                raise ValueError("the agents' optimisers are at different steps")
            st = {"step": states[0]["step"].clone(),
                  "exp_avg": torch.stack([s["exp_avg"] for s in states]),
                  "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in states])}
        elif not any(states):  # fresh: what Adam's first step would set up
            st = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(stacks[n]),
                  "exp_avg_sq": torch.zeros_like(stacks[n])}
        else:
            raise ValueError("some agents' optimisers have state and some have none")
        opt.state[stacks[n]] = st
    _share_adam_state(opt, opts, modules)
    return opt
