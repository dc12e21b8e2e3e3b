"""``ContractionRegularizer``: add CDP's term to any diffusion policy in a few lines.

    reg = ContractionRegularizer(schedule, prediction="eps")          # gamma = 0.1
    out = denoising_loss(net, actions, schedule, cond=obs)            # net(a_t, t, obs)
    loss = out.loss.mean() + reg(net, out.a_t, out.t, cond=obs)

or, for score matching and the term together (one fused pass when the network has
``forward_jvp``, as :class:`cdp.nets.MLPDenoiser` does):

    loss = reg.loss(net, actions, cond=obs).total
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..diffusion.loss import DenoisingOutput, check_trainable_prediction, denoising_loss, noisy_batch, regression_loss
from ..diffusion.parameterization import Cond, NetFn, as_cond_tuple
from ..diffusion.schedule import Prediction, VPSchedule, check_prediction
from ..capture import capturing
from .eig import EIG_METHODS, unit_tangents, resolve_method, top_eigvec_exact
from .finite_differences import SCHEMES, FiniteDifferences, finite_differences_apply
from ..options import EXACT_MAX_DIM, FORMS, WINDOWS
from .loss import HINGE_FORMS, contraction_loss, in_window


@dataclass
class RegularizedLoss:
    """Score matching and the contraction term from :meth:`ContractionRegularizer.loss`."""

    denoising: DenoisingOutput  # per-sample denoising loss and the points it used
    contraction: Tensor  # scalar, gamma * mean L_c over the regularised rows (already weighted)
    stats: dict[str, Tensor] = field(default_factory=dict)  # 0-d tensors, see ContractionRegularizer.stats

    @property
    def total(self) -> Tensor:
        return self.denoising.loss.mean() + self.contraction


#: how the term takes Jacobian-vector products (ContractionConfig.products)
PRODUCTS: tuple[str, ...] = ("auto", "native", "autograd", "fd")


def check_weights(gamma: float, margin: float | None) -> None:
    """gamma finite and >= 0; margin None or finite and >= 0 (inf or nan would train on a
    non-finite loss)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin) or margin < 0):
        raise ValueError(f"margin must be a finite number >= 0 or None, got {margin!r}")


@dataclass
class ContractionConfig:
    """Hyper-parameters of the contraction term (saved with every run).

    gamma: weight of the term (paper: 0.1). margin: hinge floor beta (None = no hinge).
    form / method / iters: see :func:`contraction_loss`. t_max: apply only to low-noise rows;
    window: which rows and how they are averaged (:func:`cdp.contraction.loss.in_window`):
    ``"official"`` averages over the rows with ``t <= t_max`` (the official offline-RL runs),
    ``"batch"`` sums over ``t < t_max`` and divides by the batch (cdp 0.1's form).
    subbatch: use only the first ``subbatch`` samples of the (already shuffled) batch — the
    term is an average, so a sub-batch is an unbiased, cheaper estimate of it.
    exact_max_dim: the exact largest eigenvalue (the full Jacobian) for actions of up to this many
    numbers (a 16 x 7 chunk is 112), ``method`` = Lanczos above it (``method="auto"``; Lanczos with
    ``iters`` steps is a lower bound, far from the top on large chunks unless ``iters`` nears D).
    products: how Jacobian-vector products of the network are taken. ``"fd"``: finite
    differences on extra rows of the network's forward call
    (:class:`~cdp.contraction.FiniteDifferences`: any per-sample network, no double backward),
    probe length ``fd_eps`` (None: the dtype's default), differences ``fd_scheme`` (``"central"``:
    two extra rows per regularised sample in the training pass; ``"forward"``: one, sharing its
    denoising row, ~30x the error in float32); ``"autograd"``: autograd's double
    backward; ``"native"``: the network's own ``forward_jvp`` when it has one
    (:class:`cdp.nets.MLPDenoiser`), else autograd; ``"auto"``: its own ``forward_jvp``, else
    ``"fd"`` for an ``nn.Module`` (or a wrapper's ``model``) with no BatchNorm in training mode or
    active dropout, else autograd (a plain closure cannot be inspected).

    Earlier versions' defaults, which the earlier imitation studies ran with and their study files
    pin: ``products="native", exact_max_dim=8`` (Lanczos with 4 steps for any action chunk).
    """

    gamma: float = 0.1
    margin: float | None = 0.1
    form: str = "eig"
    method: str = "auto"
    iters: int = 4
    t_max: float | None = None
    window: str = "official"
    subbatch: int | None = None
    exact_max_dim: int = EXACT_MAX_DIM
    probes: int = 4
    products: str = "auto"
    fd_eps: float | None = None
    fd_scheme: str = "central"

    def __post_init__(self) -> None:
        check_weights(self.gamma, self.margin)
        if self.products not in PRODUCTS:
            raise ValueError(f"products must be one of {PRODUCTS}, got {self.products!r}")
        if self.fd_eps is not None and not (isinstance(self.fd_eps, (int, float)) and math.isfinite(self.fd_eps)
                                            and self.fd_eps > 0):
            raise ValueError(f"fd_eps must be a finite number > 0 or None, got {self.fd_eps!r}")
        if self.fd_scheme not in SCHEMES:
            raise ValueError(f"fd_scheme must be one of {SCHEMES}, got {self.fd_scheme!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.method not in EIG_METHODS:
            raise ValueError(f"method must be one of {EIG_METHODS}, got {self.method!r}")
        if isinstance(self.exact_max_dim, bool) or not isinstance(self.exact_max_dim, int) or self.exact_max_dim < 1:
            raise ValueError(f"exact_max_dim must be an integer >= 1, got {self.exact_max_dim!r}")
        if self.subbatch is not None and self.subbatch < 1:
            raise ValueError(f"subbatch must be >= 1 or None, got {self.subbatch!r}")
        if self.t_max is not None and not 0 < self.t_max <= 1:
            raise ValueError(f"t_max must be in (0, 1] or None, got {self.t_max!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ContractionRegularizer:
    """``gamma * mean_b L_c(a_t[b], t[b])`` for a user's denoiser ``net_fn(a_t, t)``, the mean
    over the regularised rows: the (sub-)batch, or its rows in the ``t_max`` window (0 when the
    window holds none; ``window="batch"`` divides by the whole (sub-)batch instead)."""

    #: fused path: below this many tangent rows (regularised samples x D) one pass carrying all
    #: D tangents with a graph beats a graph-free search pass plus a one-tangent pass (CPU:
    #: kernel-launch overhead dominates small passes; flops dominate large ones).
    single_pass_rows: int = 256
    #: the same on a GPU, where a pass costs its kernel launches and the rows are nearly free
    single_pass_rows_gpu: int = 1 << 16

    def __init__(self, schedule: VPSchedule, prediction: Prediction = "eps",
                 config: ContractionConfig | None = None, **overrides) -> None:
        check_prediction(prediction)
        self.schedule, self.prediction = schedule, prediction
        cfg = asdict(config) if config is not None else {}
        cfg.update(overrides)
        self.config = ContractionConfig(**cfg)

    def products(self, net_fn: NetFn) -> NetFn:
        """``net_fn`` as the term will differentiate it (``config.products``)."""
        c = self.config
        own = hasattr(net_fn, "forward_jvp") and not isinstance(net_fn, FiniteDifferences)
        if c.products == "fd" or (c.products == "auto" and not own and finite_differences_apply(net_fn)):
            if isinstance(net_fn, FiniteDifferences) and (net_fn.eps, net_fn.scheme) == (c.fd_eps, c.fd_scheme):
                return net_fn
            return FiniteDifferences(net_fn, c.fd_eps, c.fd_scheme)
        if c.products == "autograd" and hasattr(net_fn, "forward_jvp"):
            return lambda a, t, *cond: net_fn(a, t, *cond)  # hides forward_jvp
        return net_fn

    def per_sample(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """``L_c`` per sample, ``[min(B, subbatch)]`` (0 outside the window). ``net_fn(a_t, t, *cond)``."""
        return self._hinge(self._raw(self.products(net_fn), a_t, t, cond, generator))

    def _raw(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond, generator: torch.Generator | None) -> Tensor:
        """Per sample before the hinge: the rate itself for hinge forms, ``L_c`` for the others."""
        c = self.config
        conds = as_cond_tuple(cond, a_t.shape[0])
        if c.subbatch is not None:
            a_t, t, conds = a_t[: c.subbatch], t[: c.subbatch], tuple(x[: c.subbatch] for x in conds)
        margin = None if c.form in HINGE_FORMS else c.margin  # hinge forms: the floor is applied after
        return contraction_loss(net_fn, a_t, t, self.schedule, self.prediction, margin, c.form,  # type: ignore[arg-type]
                                c.method, c.iters, cond=conds, t_max=c.t_max, window=c.window,  # type: ignore[arg-type]
                                exact_max_dim=c.exact_max_dim, probes=c.probes, generator=generator)

    def _hinge(self, raw: Tensor) -> Tensor:
        c = self.config
        return raw.clamp_min(-c.margin) if c.form in HINGE_FORMS and c.margin is not None else raw

    def weigh(self, lc: Tensor, rows: int, keep: Tensor | None = None) -> Tensor:
        """``gamma * mean`` of per-row losses ``lc [n]`` of the ``n`` regularised rows out of a
        (sub-)batch of ``rows``: over the ``n`` rows (0 when n = 0), or over ``rows`` with
        ``window="batch"``. With a mask ``keep [n]`` the regularised rows are those it marks
        (the same value with fixed shapes: what a CUDA graph needs)."""
        c = self.config
        if keep is not None:
            total = torch.where(keep, lc, torch.zeros_like(lc)).sum()
            if c.window == "batch" and c.t_max is not None:
                return c.gamma * total / rows
            return c.gamma * total / keep.sum().clamp_min(1).to(lc.dtype)
        n = lc.shape[0]
        if n == 0:
            return lc.new_zeros(())
        return c.gamma * lc.sum() / (rows if c.window == "batch" and c.t_max is not None else n)

    def stats(self, raw: Tensor, keep: Tensor | None = None) -> dict[str, Tensor]:
        """What the term did on its ``n`` regularised rows (``raw``: per row before the hinge;
        with a mask ``keep``, the rows it marks), as 0-d tensors: ``rows`` = n; for hinge
        forms also ``active``, the share of rows above the floor ``-margin`` (the rows that
        carry gradient), and ``rate``, their mean normalised rate ``lambda_max(sym J_F)/|h|``
        (for ``eig``); each 0 when no row was regularised, as the masked path (fixed shapes) gives."""
        c, raw = self.config, raw.detach()
        w = torch.ones_like(raw) if keep is None else keep.to(raw.dtype)
        n = w.sum()
        out = {"rows": n}
        if c.form in HINGE_FORMS:
            out["rate"] = (w * torch.where(w > 0, raw, torch.zeros_like(raw))).sum() / n.clamp_min(1)
            above = (raw > -c.margin).to(raw.dtype) if c.margin is not None else torch.ones_like(raw)
            out["active"] = (w * above).sum() / n.clamp_min(1)
        return out

    def _term(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond,
              generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        raw = self._raw(net_fn, a_t, t, cond, generator)
        t = torch.as_tensor(t, dtype=a_t.dtype, device=a_t.device).expand(a_t.shape[0])  # a scalar t too
        keep = in_window(t[: raw.shape[0]], self.config.t_max, self.config.window)
        if capturing():  # fixed shapes: the window as a mask
            return self.weigh(self._hinge(raw), raw.shape[0], keep), self.stats(raw, keep)
        return self.weigh(self._hinge(raw[keep]), raw.shape[0]), self.stats(raw[keep])

    def __call__(self, net_fn: NetFn, a_t: Tensor, t: Tensor, cond: Cond = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """``gamma * mean(L_c)`` over the regularised rows, a scalar to add to the training loss."""
        if self.config.gamma == 0:
            return a_t.new_zeros(())
        return self._term(self.products(net_fn), a_t, t, cond, generator)[0]

    def loss(self, net_fn: NetFn, x0: Tensor, cond: Cond = None, *, t: Tensor | None = None,
             noise: Tensor | None = None, num_steps: int | None = None,
             generator: torch.Generator | None = None, static: bool | None = None) -> RegularizedLoss:
        """Denoising loss on clean actions ``x0 [B, ...]`` plus ``gamma * mean L_c`` at the same
        ``(a_t, t)``. Same values as :func:`denoising_loss` followed by ``self(...)``; when
        ``net_fn`` has ``forward_jvp`` and the term is the exact eigenvalue hinge, both come from
        one forward pass: the eigenvector is found on the (sub-)batch without a graph, then one
        pass gives the network output for every row and ``J v`` for the regularised rows.

        ``static``: compute the fused term on every row of the (sub-)batch and average over the
        window by a mask (fixed shapes, no host reads: what a CUDA graph records) instead of
        gathering the rows inside it; the same value. Default: while a graph is recorded."""
        check_trainable_prediction(self.prediction)
        B = x0.shape[0] if x0.ndim else 0
        conds = as_cond_tuple(cond, B)
        c = self.config
        if c.gamma > 0:
            net_fn = self.products(net_fn)
        fusable = (hasattr(net_fn, "forward_jvp") and c.form == "eig" and c.gamma > 0 and x0.ndim >= 2
                   and resolve_method(c.method, x0[0].numel(), c.exact_max_dim) == "exact")
        if not fusable:
            out = denoising_loss(net_fn, x0, self.schedule, self.prediction, t=t, noise=noise, cond=conds,  # type: ignore[arg-type]
                                 num_steps=num_steps, generator=generator)
            if c.gamma == 0:
                return RegularizedLoss(out, out.a_t.new_zeros(()))
            return RegularizedLoss(out, *self._term(net_fn, out.a_t, out.t, conds, generator))

        t, noise, a_t = noisy_batch(x0, self.schedule, t, noise, num_steps, generator)
        rows = B if c.subbatch is None else min(c.subbatch, B)
        idx = torch.arange(rows, device=x0.device)
        keep = None
        if static is None:
            static = capturing()
        if static:  # fixed shapes: every row of the (sub-)batch, the window as a mask
            keep = in_window(t[:rows], c.t_max, c.window)
        elif c.t_max is not None:
            idx = idx[in_window(t[:rows], c.t_max, c.window)]
            if idx.numel() == 0:
                out = denoising_loss(net_fn, x0, self.schedule, self.prediction, t=t, noise=noise, cond=conds)  # type: ignore[arg-type]
                return RegularizedLoss(out, a_t.new_zeros(()), self.stats(a_t.new_zeros(0)))
        n, D = idx.shape[0], x0[0].numel()
        ts = t[idx] if n < B else t
        f, h = self.schedule.sampling_ode_coefficients(ts, self.prediction)
        sgn = torch.sign(h).to(x0.dtype)
        index = None if n == B else idx  # every row regularised: the network's pass needs no gather
        a_rows = a_t if index is None else a_t[idx]
        basis = unit_tangents(a_rows.reshape(n, D)).reshape(D, n, *x0.shape[1:])
        single = self.single_pass_rows if x0.device.type == "cpu" else self.single_pass_rows_gpu
        if n * D <= single and not getattr(net_fn, "graph_free_jvp", False):
            # small: one pass with all D tangents; J keeps its graph, v comes from its values
            pred, jt = net_fn.forward_jvp(a_t, t, *conds, tangent=basis, index=index)
            J = jt.reshape(D, n, D).permute(1, 2, 0)
            v = top_eigvec_exact(J.detach(), sgn)[1]
            q = torch.einsum("bi,bij,bj->b", v, J, v)
        elif index is None and getattr(net_fn, "graph_free_jvp", False):
            # finite differences on every row: the denoising pass first; the search's and the term's
            # probe rows are taken against its output (no base row run twice; with fewer rows
            # regularised, one call for the denoising and probe rows costs less)
            pred = net_fn(a_t, t, *conds)
            with torch.no_grad():
                jt = net_fn.forward_jvp(a_t, t, *conds, tangent=basis, primal=pred.detach())[1]
                v = top_eigvec_exact(jt.reshape(D, n, D).permute(1, 2, 0), sgn)[1]
            jv = net_fn.forward_jvp(a_t, t, *conds, tangent=v.reshape(1, n, *x0.shape[1:]), primal=pred)[1]
            q = (v * jv.reshape(n, D)).sum(-1)
        else:
            # large: search without a graph, then one pass with the single tangent v
            with torch.no_grad():
                sub = conds if index is None else tuple(x[idx] for x in conds)  # this graph-free pass runs on the rows alone
                jt = net_fn.forward_jvp(a_rows, ts, *sub, tangent=basis)[1]
                v = top_eigvec_exact(jt.reshape(D, n, D).permute(1, 2, 0), sgn)[1]
            pred, jv = net_fn.forward_jvp(a_t, t, *conds, tangent=v.reshape(1, n, *x0.shape[1:]), index=index)
            q = (v * jv.reshape(n, D)).sum(-1)
        lam = (f / h.abs()).to(x0.dtype) + sgn * q  # Hellmann-Feynman: v^T J v with v held fixed
        out = DenoisingOutput(regression_loss(pred, x0, noise, self.prediction), a_t, t, noise, pred)
        return RegularizedLoss(out, self.weigh(self._hinge(lam), rows, keep), self.stats(lam, keep))
