"""Train and evaluate a small unconditional diffusion model on a toy mixture, with or without
the contraction term: the two-mode demo and the mode-preservation test both run on this."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .contraction import ContractionConfig, ContractionRegularizer, contraction_loss
from .diffusion import VPSchedule, denoising_loss, sample
from .nets import MLPDenoiser
from .toy import GaussianMixture


@dataclass
class ToyTrainConfig:
    """One toy run. ``contraction=None`` trains the plain diffusion model."""

    steps: int = 2000
    batch: int = 256
    n_data: int = 1000  # a finite dataset, as in offline learning
    lr: float = 1e-3
    hidden: int = 128
    depth: int = 3
    prediction: str = "eps"
    seed: int = 0
    sampler: str = "dpm_solver++"
    sample_steps: int = 15
    n_samples: int = 4000
    contraction: ContractionConfig | None = None
    schedule: VPSchedule = field(default_factory=VPSchedule)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = {k: v for k, v in d["schedule"].items() if not k.startswith("_")}
        return d


@dataclass
class ToyResult:
    config: ToyTrainConfig
    model: MLPDenoiser
    samples: Tensor  # [n_samples, D]
    mode_weights: list[float]  # fraction of samples nearest to each component
    on_support: float  # fraction within 3 std of its nearest component mean
    within_mode_std: float  # mean over modes of the samples' std around their mode mean
    lambda_data: float  # mean normalised lambda_max(sym J_F)/|h| on data points, t in (0, 0.1)
    seconds_per_step: float
    loss_curve: list[float]


def train_toy(mixture: GaussianMixture, cfg: ToyTrainConfig, progress: bool = False) -> ToyResult:
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data, _ = mixture.sample(cfg.n_data, generator=g)
    D = mixture.dim
    model = MLPDenoiser(D, hidden=cfg.hidden, depth=cfg.depth)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    reg = ContractionRegularizer(cfg.schedule, cfg.prediction, cfg.contraction) if cfg.contraction else None
    net_fn = lambda a, t: model(a, t)  # noqa: E731
    curve: list[float] = []
    t0 = time.perf_counter()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="train", leave=False):
        x0 = data[torch.randint(0, cfg.n_data, (cfg.batch,), generator=g)]
        out = denoising_loss(net_fn, x0, cfg.schedule, cfg.prediction, generator=g)  # type: ignore[arg-type]
        loss = out.loss.mean()
        if reg is not None:
            loss = loss + reg(net_fn, out.a_t, out.t, generator=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            curve.append(out.loss.detach().mean().item())
    sec = (time.perf_counter() - t0) / cfg.steps
    model.eval()
    with torch.inference_mode():
        xT = torch.randn(cfg.n_samples, D, generator=g)
        xs = sample(net_fn, xT, cfg.schedule, cfg.sampler, cfg.sample_steps, cfg.prediction)  # type: ignore[arg-type]
    finite = torch.isfinite(xs).all(1)
    lab = mixture.assign(torch.where(finite[:, None], xs, torch.zeros_like(xs)))
    K = mixture.means.shape[0]
    weights = [float((lab == k).float().mean()) for k in range(K)]
    dist = (xs.double() - mixture.means[lab]).norm(dim=1)
    on_support = float(((dist <= 3 * mixture.stds[lab] * D**0.5) & finite).float().mean())
    stds = [float((xs[lab == k].double() - mixture.means[k]).pow(2).sum(1).mean().sqrt() / D**0.5)
            for k in range(K) if (lab == k).sum() > 1]
    # contraction measured where the term acts on the data: small t, data points
    a0 = data[:512]
    t = 1e-3 + 0.099 * torch.rand(a0.shape[0], generator=g)
    a_t = cfg.schedule.q_sample(a0, t, torch.randn(a0.shape, generator=g))
    with torch.no_grad():
        lam = contraction_loss(net_fn, a_t, t, cfg.schedule, cfg.prediction, margin=None)  # type: ignore[arg-type]
    return ToyResult(cfg, model, xs, weights, on_support, sum(stds) / max(len(stds), 1), float(lam.mean()), sec, curve)
