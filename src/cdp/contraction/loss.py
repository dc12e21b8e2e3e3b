"""The contraction loss of a denoising network's sampling ODE.

Sampling ODE (DESIGN.md §2): ``da/dtau = F(a) = f(t) a + h(t) n(a, t)``, ``(f, h)`` from
:meth:`VPSchedule.sampling_ode_coefficients`. Trajectories contract where
``lambda_max(sym J_F) < 0``. Dividing by ``|h|`` puts all parameterisations and times on one
scale; the normalised field is ``G(a) = (f/|h|) a + sign(h) n(a)`` and
``lambda_max(sym J_G) = lambda_max(sym J_F) / |h|`` (no sign is special-cased: for an eps
network ``h < 0`` and the top eigenvalue of ``-sym J_eps`` is what matters).

Forms (per sample, ``S_n = sym J_n``, ``beta`` = ``margin``):

  ``eig``                ``max(-beta, lambda_max(sym J_F) / |h|)`` — the hinge. For eps:
                         ``sigma + lambda_max(-S_eps)``; x0: ``lambda_max(S_x0) - alpha``;
                         score: ``lambda_max(S_score) + 1``.
  ``frobenius``          ``||sym J_F / |h| + beta I||_F^2`` — pulls the *whole* normalised
                         spectrum to ``-beta`` (not a hinge: also penalises over-contraction).
                         Exact for small D, Hutchinson-estimated otherwise.
  ``literal``            the seed's formula on the raw network Jacobian:
                         ``max(-beta, lambda_max(S_n) + f/h)``. Equal to ``eig`` when ``h > 0``
                         (x0, score networks); for an eps network it is
                         ``lambda_max(S_eps) - sigma`` — the *wrong sign* (positive for narrow,
                         contracting data). Kept for ablations.
  ``literal_frobenius``  ``||S_n + beta I||_F^2``: for an x0 network with beta = 0.1 this is
                         D^2 times the official code's default ``mean((sym J_x0 + 0.1 I)^2)``.
  ``official_frobenius`` ``mean over entries of (S_n + beta I)^2``: the official offline-RL
                         runs' ``loss_type="jacobian"`` exactly as they normalise it
                         (``literal_frobenius / D^2``); averaged over the windowed rows by a
                         regulariser, it is their ``((J_sym + 0.1 I)^2).mean()``.

``margin=None`` removes the hinge (``eig``/``literal`` return the raw eigenvalue; Frobenius
forms use beta = 0).

Time window (``t_max``, :func:`in_window`), ``window``:

  ``official``  rows with ``t <= t_max``: at discrete steps ``t = i / T`` these are the official
                offline-RL runs' levels ``k < int(t_max T)`` with ``k = i - 1`` (5 of 50 at
                ``t_max = 0.1``); a regulariser averages the term over these rows only.
  ``batch``     rows with ``t < t_max`` (4 of 50), the term summed over them and divided by the
                whole batch: ``E_t[1{t in window} L_c]``, the form of cdp 0.1's offline-RL study
                (at T = 50, t_max = 0.1 about 1/15 of ``official``'s weight).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..capture import capturing
from ..diffusion.parameterization import Cond, NetFn, as_cond_tuple
from ..diffusion.schedule import Prediction, VPSchedule, check_prediction
from ..options import FORMS, WINDOWS, Form, Window
from .eig import EigMethod, check_input, linearize, max_sym_eig, resolve_method

#: forms that are a hinge on an eigenvalue (``margin`` is their floor); the others use it as beta
HINGE_FORMS: tuple[str, ...] = ("eig", "literal")


def in_window(t: Tensor, t_max: float | None, window: str = "official") -> Tensor:
    """Boolean ``[B]``: the rows the term applies to (all when ``t_max`` is None). ``official``
    keeps ``t <= t_max`` (a relative 1e-6 absorbs the rounding of ``i / T``), ``batch`` keeps
    ``t < t_max``."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    if t_max is None:
        return torch.ones_like(t, dtype=torch.bool)
    return t <= t_max * (1 + 1e-6) if window == "official" else t < t_max


def contraction_loss(
    net_fn: NetFn,
    a_t: Tensor,
    t: Tensor,
    schedule: VPSchedule,
    prediction: Prediction = "eps",
    margin: float | None = 0.1,
    form: Form = "eig",
    method: EigMethod = "auto",
    iters: int = 4,
    *,
    cond: Cond = None,
    t_max: float | None = None,
    window: Window = "official",
    exact_max_dim: int = 8,
    probes: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample contraction loss ``[B]``, differentiable w.r.t. the network's parameters.

    net_fn: ``(a_t [B, ...], t [B], *cond) -> [B, ...]`` predicting ``prediction``.
    cond: per-sample conditioning (a tensor or a tuple of tensors, each ``[B, ...]``, e.g. the
    states) passed on to ``net_fn``. Pass it here rather than closing over it: the time window
    (and a regulariser's sub-batch) evaluate the network on a subset of the samples.
    a_t: noisy actions ``[B, ...]`` (e.g. the score-matching batch); t: ``[B]`` in (0, 1].
    t_max: apply only to the rows :func:`in_window` keeps (``window``; the official offline-RL
    runs use ``t_max = 0.1``); other samples get 0 and cost nothing. probes: Hutchinson probes for Frobenius forms when
    ``D > exact_max_dim``.
    """
    check_prediction(prediction)
    check_input(a_t, "a_t")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if margin is not None and not margin >= 0:
        raise ValueError(f"margin must be >= 0 or None, got {margin!r}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive int, got {probes!r}")
    B = a_t.shape[0]
    t = torch.as_tensor(t, dtype=a_t.dtype, device=a_t.device)
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t must be a scalar or [B] = [{B}], got shape {tuple(t.shape)}")
    if not capturing() and (not torch.isfinite(t).all() or (t <= 0).any() or (t > 1).any()):
        raise ValueError("t must be finite and in (0, 1]")
    resolve_method(method, a_t[0].numel(), exact_max_dim)  # validate the name early

    conds = as_cond_tuple(cond, B)

    keep = in_window(t, t_max, window)
    if t_max is not None and capturing():
        # fixed shapes: every row computed, those outside zeroed (random search starts are drawn
        # for every row, so a Lanczos / power estimate differs from the eager one by its own noise)
        lc = _loss(net_fn, a_t, t, conds, schedule, prediction, margin, form, method, iters, exact_max_dim, probes,
                   generator)
        return torch.where(keep, lc, torch.zeros_like(lc))
    if t_max is not None:
        out = a_t.new_zeros(B)
        if keep.any():
            idx = keep.nonzero().squeeze(1)
            sub = _loss(net_fn, a_t[idx], t[idx], tuple(c[idx] for c in conds), schedule, prediction, margin,
                        form, method, iters, exact_max_dim, probes, generator)
            out = out.index_put((idx,), sub)
        return out
    return _loss(net_fn, a_t, t, conds, schedule, prediction, margin, form, method, iters, exact_max_dim, probes,
                 generator)


class NetAt:
    """The network at fixed per-sample times and conditioning: ``a -> net_fn(a, t, *cond)``.
    Exposes the network's fused ``forward_jvp`` when it has one."""

    def __init__(self, net_fn: NetFn, t: Tensor, conds: tuple[Tensor, ...]) -> None:
        self.net_fn, self.t, self.conds = net_fn, t, conds
        self.graph_free_jvp = bool(getattr(net_fn, "graph_free_jvp", False))
        if hasattr(net_fn, "forward_jvp"):
            self.forward_jvp = lambda a, tangent, **kw: net_fn.forward_jvp(a, t, *conds, tangent=tangent, **kw)  # type: ignore[attr-defined]

    def __call__(self, a: Tensor) -> Tensor:
        return self.net_fn(a, self.t, *self.conds)


def _loss(net_fn: NetFn, a_t: Tensor, t: Tensor, conds: tuple[Tensor, ...], schedule: VPSchedule,
          prediction: Prediction, margin: float | None, form: str, method: str, iters: int, exact_max_dim: int,
          probes: int, generator: torch.Generator | None) -> Tensor:
    f, h = schedule.sampling_ode_coefficients(t, prediction)
    f, h = f.to(a_t.dtype), h.to(a_t.dtype)
    net = NetAt(net_fn, t, conds)
    beta = 0.0 if margin is None else margin

    if form in ("eig", "literal"):
        if form == "eig":
            # lambda_max(sym J_G), G = (f/|h|) a + sign(h) n(a): the top eigenvector of sign(h) S_n
            sgn = torch.sign(h)
            lam = f / h.abs() + max_sym_eig(net, a_t, method, iters, scale=sgn, exact_max_dim=exact_max_dim,
                                            generator=generator)
        else:
            lam = max_sym_eig(net, a_t, method, iters, exact_max_dim=exact_max_dim, generator=generator) + f / h
        return lam if margin is None else lam.clamp_min(-beta)

    # Frobenius forms: ||c I + s S_n||_F^2 per sample.
    if form == "frobenius":
        c, s = f / h.abs() + beta, torch.sign(h)
    else:
        c, s = torch.full_like(f, beta), torch.ones_like(f)
    lin = linearize(net, a_t)
    x = lin.x
    B, D = x.shape
    per_entry = 1.0 / D**2 if form == "official_frobenius" else 1.0
    if D <= exact_max_dim:
        J = lin.jacobian(create_graph=True)
        A = s[:, None, None] * 0.5 * (J + J.transpose(1, 2)) + c[:, None, None] * torch.eye(D, dtype=x.dtype, device=x.device)
        return A.pow(2).sum((1, 2)) * per_entry
    # Hutchinson: ||A||_F^2 = E_z |A z|^2 for Rademacher z (E[z z^T] = I).
    z = torch.randint(0, 2, (probes, B, D), generator=generator, device=x.device).to(x.dtype) * 2 - 1
    Jz = torch.stack([lin.jvp(zp, create_graph=True) for zp in z])
    JTz = torch.stack([lin.vjp(zp, create_graph=True) for zp in z])
    Az = c[None, :, None] * z + s[None, :, None] * 0.5 * (Jz + JTz)
    return Az.pow(2).sum(-1).mean(0) * per_entry
