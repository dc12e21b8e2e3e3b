"""Chunked policies with a LeRobot-style deployment API, and the diffusion policy.

Every policy sees the last ``n_obs_steps`` (To) observations and predicts a chunk of ``horizon``
(Tp) actions; ``select_action`` executes ``n_action_steps`` (Ta) of them, starting at the chunk's
index ``action_start`` (the current step), before it predicts again::

    policy.reset()
    obs, _ = env.reset(seed=0)
    while not done:
        action = policy.select_action(obs)      # [action_dim] (or [B, action_dim] for batched obs)
        obs, r, term, trunc, info = env.step(action)

``save_pretrained(dir)`` writes ``config.json`` and ``model.safetensors`` (weights and the
normalisation statistics); ``load_policy(dir)`` / ``Cls.from_pretrained(dir)`` read them back.

:class:`DiffusionPolicy` (Chi et al. 2023): a denoiser (1-D UNet, DiT or MLP) over the normalised
action chunk, conditioned on the normalised, flattened observation history; DDPM training on a
discrete cosine schedule (T = 100) with eps-prediction; DDIM or DPM-Solver++ sampling. With
``contraction`` set (gamma > 0) the loss gains ``gamma * L_c`` (CDP-UNet / CDP-DiT).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..contraction import ContractionConfig, ContractionRegularizer
from ..diffusion import VPSchedule, denoising_loss, sample
from ..nets import DiT, MLPDenoiser, UNet1D
from .normalize import MinMax

ObsLike = dict[str, np.ndarray | Tensor] | np.ndarray | Tensor
CHUNK_STARTS = ("history", "current")


@dataclass
class PolicyConfig:
    """What every chunked policy shares: observation streams and the To / Tp / Ta horizons."""

    obs_keys: list[str]
    obs_dim: int  # per step, the obs_keys' streams concatenated in order
    action_dim: int
    n_obs_steps: int = 2  # To
    horizon: int = 16  # Tp
    n_action_steps: int = 8  # Ta
    # where a chunk begins: at the first observed step ("history", Diffusion Policy's: the current
    # step is its index To - 1) or at the "current" step (the official low-dim runs predict the
    # current action alone: horizon 1, Ta 1)
    chunk_start: str = "history"

    def __post_init__(self) -> None:
        if min(self.obs_dim, self.action_dim, self.n_obs_steps, self.horizon, self.n_action_steps) < 1:
            raise ValueError("obs_dim, action_dim and the horizons must be positive")
        if self.chunk_start not in CHUNK_STARTS:
            raise ValueError(f"chunk_start must be one of {CHUNK_STARTS}, got {self.chunk_start!r}")

    @property
    def action_start(self) -> int:
        """Index of the current step within a predicted chunk."""
        return 0 if self.chunk_start == "current" else self.n_obs_steps - 1


class ChunkPolicy(nn.Module):
    """Base: observation history and action queue, batching, save / load. Subclasses give
    ``compute_loss(obs [B, To, obs_dim], actions [B, Tp, d]) -> dict`` and
    ``predict_chunk(obs [B, To, obs_dim]) -> [B, Tp, d]`` (environment units)."""

    policy_type: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.obs_norm, self.act_norm = MinMax(config.obs_dim), MinMax(config.action_dim)
        self._obs: deque[Tensor] = deque(maxlen=config.n_obs_steps)
        self._actions: deque[Tensor] = deque()

    @property
    def action_start(self) -> int:
        """Index of the current step within a predicted chunk."""
        return self.config.action_start

    @property
    def device(self) -> torch.device:
        """Where the policy lives (``policy.to(device)`` moves it); observations are moved here."""
        return self.obs_norm.lo.device

    def cond(self, obs: Tensor) -> Tensor:
        """Normalised, flattened observation history: ``[B, To, obs_dim] -> [B, To * obs_dim]``."""
        return self.obs_norm(obs).reshape(obs.shape[0], -1)

    def set_stats(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """Fit the min-max normalisers on the training data (``[N, obs_dim]``, ``[N, d]``)."""
        self.obs_norm.load_state_dict(MinMax.fit(obs).state_dict())
        self.act_norm.load_state_dict(MinMax.fit(actions).state_dict())

    def _key_ndim(self, key: str) -> int:
        """Dimensions of one step of a stream: 3 for an image ``[H, W, 3]``, else 1."""
        return 3 if key in getattr(self.config, "image_keys", ()) else 1

    # ------------------------------------------------------------------ deployment
    def reset(self) -> None:
        self._obs.clear()
        self._actions.clear()

    def flat_obs(self, obs: ObsLike) -> Tensor:
        """A dict of streams (or a flat array) -> ``[B, obs_dim]`` float32."""
        if isinstance(obs, dict):
            missing = [k for k in self.config.obs_keys if k not in obs]
            if missing:
                raise KeyError(f"observation lacks {missing}; the policy reads {self.config.obs_keys}")
            parts = [torch.as_tensor(np.asarray(obs[k]), dtype=torch.float32, device=self.device) for k in self.config.obs_keys]
            parts = [p.reshape(1, -1) if p.ndim <= self._key_ndim(k) else p.reshape(p.shape[0], -1)
                     for k, p in zip(self.config.obs_keys, parts)]
            x = torch.cat(parts, -1)
        else:
            x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
            x = x.reshape(1, -1) if x.ndim == 1 else x
        if x.shape[-1] != self.config.obs_dim:
            raise ValueError(f"observation has {x.shape[-1]} dims, the policy takes {self.config.obs_dim}")
        return x

    def reads_next_observation(self) -> bool:
        """Whether the observation given to the next ``select_action`` will condition a predicted
        chunk. A chunk is predicted when the queue runs out, from the To observations up to that
        step, so with ``r`` actions queued the next one is read only if ``r < To`` (2 of every 8
        steps at To = 2, Ta = 8): the others may be stale, e.g. cameras not drawn."""
        return len(self._actions) < self.config.n_obs_steps

    @torch.no_grad()
    def select_action(self, obs: ObsLike) -> np.ndarray:
        """The next action: ``[d]`` for one observation, ``[B, d]`` for a batch. A new chunk is
        predicted whenever the queue is empty (every Ta steps)."""
        k0 = self.config.obs_keys[0]
        single = (isinstance(obs, dict) and k0 in obs and np.asarray(obs[k0]).ndim == self._key_ndim(k0)) or \
            (not isinstance(obs, dict) and np.asarray(obs).ndim == 1)
        x = self.flat_obs(obs)
        if not self._obs:  # first step after reset: the history is this observation repeated
            self._obs.extend([x] * self.config.n_obs_steps)
        else:
            self._obs.append(x)
        if not self._actions:
            chunk = self.predict_chunk(torch.stack(list(self._obs), 1))
            s = self.action_start
            self._actions.extend(chunk[:, s:s + self.config.n_action_steps].unbind(1))
        a = self._actions.popleft().cpu().numpy()
        return a[0] if single else a

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        from ..io import atomic_write

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = d / ".model.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(d / "model.safetensors")
        atomic_write(d / "config.json", json.dumps({"policy_type": self.policy_type, **_to_json(self.config)},
                                                   indent=2).encode())
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ChunkPolicy:
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"{d} holds no saved policy (config.json + model.safetensors)")
        raw = json.loads((d / "config.json").read_text())
        kind = raw.pop("policy_type", None)
        if kind != cls.policy_type:
            raise ValueError(f"{d} holds a {kind!r} policy, not {cls.policy_type!r}")
        policy = cls(_from_json(cls.config_class, raw))
        policy.load_state_dict(load_file(str(d / "model.safetensors")))
        return policy.eval()

    def compute_loss(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict_chunk(self, obs: Tensor) -> Tensor:
        raise NotImplementedError


def _to_json(cfg) -> dict:
    return asdict(cfg)


def _from_json(cls: type, raw: dict):
    kw = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        v = raw[f.name]
        if f.name == "contraction" and v is not None:
            v = ContractionConfig(**v)
        elif isinstance(v, list) and f.name not in ("obs_keys", "image_keys"):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


# ====================================================================== diffusion policy
BACKBONES = ("unet", "dit", "mlp")


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    backbone: str = "unet"
    prediction: str = "eps"
    train_steps: int = 100  # T of the discrete cosine schedule
    sampler: str = "ddim"
    sample_steps: int = 10
    unet_dims: tuple[int, ...] = (64, 128, 256)
    dit_width: int = 128
    dit_depth: int = 4
    dit_heads: int = 4
    mlp_hidden: int = 256
    contraction: ContractionConfig | None = None  # None or gamma 0: plain Diffusion Policy
    # cameras: the last obs_keys may be RGB images [H, W, 3] (uint8 values, flattened into the
    # observation vector); each goes through its own encoder, a random crop in training and the
    # centre crop at inference (Diffusion Policy's robomimic image setting: 84 -> 76, ResNet-18)
    image_keys: list[str] = field(default_factory=list)
    image_size: int = 84
    crop: int = 76
    encoder: str = "resnet18"
    image_features: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        start = self.action_start
        if start + self.n_action_steps > self.horizon:
            raise ValueError(f"the {self.n_action_steps} executed actions from the chunk's index {start} (the current "
                             f"step, chunk_start={self.chunk_start!r}) do not fit a horizon of {self.horizon}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {BACKBONES}")
        if self.backbone == "unet" and self.horizon % 2 ** (len(self.unet_dims) - 1):
            raise ValueError(f"a UNet with {len(self.unet_dims)} levels needs a horizon divisible by "
                             f"{2 ** (len(self.unet_dims) - 1)}, got {self.horizon} (the DiT or MLP takes any)")
        if self.image_keys:
            if list(self.obs_keys[-len(self.image_keys):]) != list(self.image_keys):
                raise ValueError(f"image_keys {self.image_keys} must be the last obs_keys ({self.obs_keys})")
            if self.low_dim < 0:
                raise ValueError(f"obs_dim {self.obs_dim} is smaller than {len(self.image_keys)} images of "
                                 f"{self.image_size}x{self.image_size}x3")
            if not 0 < self.crop <= self.image_size:
                raise ValueError(f"crop must be in (0, image_size={self.image_size}], got {self.crop}")

    @property
    def low_dim(self) -> int:
        """Size of the non-image part of one step's observation vector."""
        return self.obs_dim - len(self.image_keys) * 3 * self.image_size ** 2

    @property
    def cond_dim(self) -> int:
        """Size of the denoiser's conditioning vector (all To steps)."""
        per_step = self.low_dim + len(self.image_keys) * self.image_features if self.image_keys else self.obs_dim
        return self.n_obs_steps * per_step
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(f"n_action_steps {self.n_action_steps} does not fit: horizon {self.horizon} - "
                             f"n_obs_steps {self.n_obs_steps} + 1 actions lie ahead of the current step")


class DiffusionPolicy(ChunkPolicy):
    policy_type = "diffusion"
    config_class = DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig) -> None:
        super().__init__(config)
        c = config
        cond = c.cond_dim
        if c.image_keys:
            from ..nets.vision import make_image_encoder

            self.encoders = nn.ModuleDict({k: make_image_encoder(c.encoder, c.image_features) for k in c.image_keys})
        if c.backbone == "unet":
            self.net: nn.Module = UNet1D(c.action_dim, cond, dims=tuple(c.unet_dims))
        elif c.backbone == "dit":
            self.net = DiT(c.action_dim, cond, width=c.dit_width, depth=c.dit_depth, heads=c.dit_heads,
                           max_horizon=c.horizon)
        else:
            self.net = MLPDenoiser((c.horizon, c.action_dim), cond, hidden=c.mlp_hidden)
        self.schedule = VPSchedule.discrete_cosine(c.train_steps)
        self.reg = (ContractionRegularizer(self.schedule, c.prediction, c.contraction)  # type: ignore[arg-type]
                    if c.contraction is not None and c.contraction.gamma > 0 else None)

    def cond(self, obs: Tensor) -> Tensor:
        """``[B, To, obs_dim] -> [B, cond_dim]``: the normalised low-dim streams and, for each
        camera, its encoder's features of the (random in training, centre at inference) crop."""
        c = self.config
        if not c.image_keys:
            return super().cond(obs)
        from ..nets.vision import crop

        b, steps, low = obs.shape[0], obs.shape[1], c.low_dim
        lo, hi = self.obs_norm.lo[:low], self.obs_norm.hi[:low]
        parts = [2 * (obs[..., :low] - lo) / (hi - lo) - 1]
        size = 3 * c.image_size ** 2
        for i, key in enumerate(c.image_keys):
            img = obs[..., low + i * size: low + (i + 1) * size].reshape(b * steps, c.image_size, c.image_size, 3)
            img = crop(img.permute(0, 3, 1, 2) / 127.5 - 1, c.crop, random=self.training)
            parts.append(self.encoders[key](img).reshape(b, steps, -1))
        return torch.cat(parts, -1).reshape(b, -1)

    def compute_loss(self, obs: Tensor, actions: Tensor, t: Tensor | None = None,
                     noise: Tensor | None = None) -> dict[str, Tensor]:
        """obs ``[B, To, obs_dim]``, actions ``[B, Tp, d]`` (environment units); the diffusion
        times ``t [B]`` and noises ``noise [B, Tp, d]`` are drawn here unless given (as
        :func:`draw_noise` draws them). With the term, also its stats on the rows it regularised
        (``contraction_rows`` / ``_active`` / ``_rate``, :meth:`ContractionRegularizer.stats`;
        none where no row was)."""
        c, x0, cond = self.config, self.act_norm(actions), self.cond(obs)
        stats: dict[str, Tensor] = {}
        if self.reg is not None:
            out = self.reg.loss(self.net, x0, cond, t=t, noise=noise, num_steps=c.train_steps)
            denoise, contraction = out.denoising.loss.mean(), out.contraction
            stats = {f"contraction_{k}": v for k, v in out.stats.items()}
        else:
            denoise = denoising_loss(self.net, x0, self.schedule, c.prediction, cond=cond, t=t, noise=noise,  # type: ignore[arg-type]
                                     num_steps=c.train_steps).loss.mean()
            contraction = torch.zeros((), device=x0.device)
        return {"loss": denoise + contraction, "denoise": denoise, "contraction": contraction, **stats}

    def draw_noise(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(t [batch], noise [batch, Tp, d])`` for ``batch`` training rows, in the order
        :meth:`compute_loss` draws them itself (times first)."""
        c = self.config
        t = self.schedule.sample_t(batch, num_steps=c.train_steps, device=device)
        return t, torch.randn(batch, c.horizon, c.action_dim, device=device)

    @torch.no_grad()
    def predict_chunk(self, obs: Tensor, noise: Tensor | None = None) -> Tensor:
        """``[B, Tp, d]`` actions (environment units) for ``obs [B, To, obs_dim]``."""
        c, cond = self.config, self.cond(obs)
        x_T = noise if noise is not None else torch.randn(obs.shape[0], c.horizon, c.action_dim, device=obs.device)
        x = sample(lambda a, t: self.net(a, t, cond), x_T, self.schedule, c.sampler, c.sample_steps,  # type: ignore[arg-type]
                   c.prediction, clip_x0=1.0)  # type: ignore[arg-type]
        return self.act_norm.inverse(x.clamp(-1, 1))


def load_policy(directory: str | Path) -> ChunkPolicy:
    """Any saved policy, by the ``policy_type`` in its ``config.json``."""
    from .bcgmm import BCGMM
    from .dbc import DBC

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} holds no saved policy (no config.json)")
    kind = json.loads((d / "config.json").read_text()).get("policy_type")
    classes = {c.policy_type: c for c in (DiffusionPolicy, BCGMM, DBC)}
    if kind not in classes:
        raise ValueError(f"{d}: unknown policy_type {kind!r}; known: {sorted(classes)}")
    return classes[kind].from_pretrained(d)
