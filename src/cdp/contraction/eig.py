"""Largest algebraic eigenvalue of the symmetric Jacobian of a sample-wise map.

For ``fn: [B, *shape] -> [B, *shape]`` acting on each sample independently and
``J_b = d fn(x)_b / d x_b`` (``D x D``, ``D = prod(shape)``), :func:`max_sym_eig` returns
``lambda_max((J_b + J_b^T) / 2)`` for every b: the *largest algebraic* eigenvalue, which a
strongly negative eigenvalue must not hide (plain power iteration would return the one of
largest magnitude).

Cost model (DESIGN.md §3). ``fn`` runs forward once, with a graph to ``x``; every Jacobian
product is then a backward pass through that graph (:class:`Linearization`). The eigenvector
``v`` is searched for without keeping a graph; the value returned is the Rayleigh quotient
``v^T J v`` from one differentiable vector-Jacobian product, whose gradient w.r.t. the
network's parameters is exact for a simple eigenvalue (Hellmann-Feynman:
``d lambda = v^T dA v``; the skew part of J drops out of ``v^T J v``).

Methods (``S = sym J``):
  ``exact``   J from one batched backward over the D basis vectors; ``eigh``. Exact; best
              for D <= ~8.
  ``lanczos`` ``iters`` Lanczos steps with full re-orthogonalisation, each one JVP + one VJP;
              returns the top Ritz value, a lower bound that converges to lambda_max
              (exact once ``iters >= D``).
  ``power``   power iteration made to find the largest *algebraic* eigenvalue: ``iters`` steps
              on S give the dominant eigenvalue mu; where mu < 0 (a negative eigenvalue
              dominates), ``iters`` more steps on ``S - mu I``, whose dominant eigenvalue is
              ``lambda_max - mu``. Up to ``2 * iters`` matvecs.
  ``auto``    ``exact`` if ``D <= exact_max_dim``, else ``lanczos``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..capture import capturing

EigMethod = Literal["auto", "exact", "power", "lanczos"]
EIG_METHODS: tuple[str, ...] = ("auto", "exact", "power", "lanczos")

SampleFn = Callable[[Tensor], Tensor]


class FlatFn:
    """``fn`` seen on flattened samples: ``[B, D] -> [B, D]``, with the shape check done once."""

    def __init__(self, fn: SampleFn, x: Tensor) -> None:
        self.fn, self.shape = fn, x.shape

    def __call__(self, z: Tensor) -> Tensor:
        out = self.fn(z.reshape(self.shape))
        if out.shape != self.shape:
            raise ValueError(
                f"fn must map [B, *shape] to the same shape; got {tuple(out.shape)} for input {tuple(self.shape)}"
            )
        return out.reshape(self.shape[0], -1)


def check_input(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"{name} must be [B, *shape] with B >= 1 and a non-empty shape, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not capturing() and not torch.isfinite(x).all():  # a host read: not while a graph records
        raise ValueError(f"{name} contains NaN or inf")


def resolve_method(method: str, dim: int, exact_max_dim: int) -> str:
    if method not in EIG_METHODS:
        raise ValueError(f"method must be one of {EIG_METHODS}, got {method!r}")
    if method == "auto":
        return "exact" if dim <= exact_max_dim else "lanczos"
    return method


class Linearization:
    """Jacobian products of a flat sample-wise map at ``x [B, D]`` through autograd.

    ``fn`` runs forward once with a graph to its input; every product is then a backward pass
    through that graph, so ``K`` matvecs cost no extra forward passes. ``vjp(u) = J^T u``;
    ``jvp(v) = J v`` by the double-backward trick (``J v`` is the gradient of ``<J^T u, v>``
    w.r.t. a dummy ``u``); ``jacobian()`` all ``D`` rows in one batched backward. With
    ``create_graph=True`` results stay differentiable w.r.t. what ``fn`` closes over.
    """

    def __init__(self, fn: FlatFn, x: Tensor) -> None:
        self.x = x.detach().clone().requires_grad_(True)  # clone: x may be an inference tensor
        with torch.enable_grad():
            self.y = fn(self.x)
        self._u: Tensor | None = None
        self._jtu: Tensor | None = None

    def vjp(self, u: Tensor, create_graph: bool = False) -> Tensor:
        return self._grad(self.y, self.x, u, create_graph)

    def jvp(self, v: Tensor, create_graph: bool = False) -> Tensor:
        if self._u is None:
            with torch.enable_grad():
                self._u = torch.zeros_like(self.y, requires_grad=True)
                self._jtu = torch.autograd.grad(self.y, self.x, self._u, create_graph=True, allow_unused=True)[0]
        if self._jtu is None:  # y does not depend on x
            return torch.zeros_like(self.y)
        return self._grad(self._jtu, self._u, v, create_graph)

    def quad(self, v: Tensor) -> Tensor:
        """Differentiable ``v^T J v`` per sample ``[B]`` (one backward with a graph)."""
        return (v * self.vjp(v, create_graph=True)).sum(-1)

    def jacobian(self, create_graph: bool = False) -> Tensor:
        """``[B, D, D]``, ``J[b, i, j] = d y_bi / d x_bj``."""
        B, D = self.x.shape
        with torch.enable_grad():
            rows = torch.autograd.grad(self.y, self.x, unit_tangents(self.x), retain_graph=True, create_graph=create_graph,
                                       is_grads_batched=True, allow_unused=True)[0]
        return self.x.new_zeros(B, D, D) if rows is None else rows.transpose(0, 1)

    def _grad(self, out: Tensor, inp: Tensor, w: Tensor, create_graph: bool) -> Tensor:
        with torch.enable_grad():
            g = torch.autograd.grad(out, inp, w, retain_graph=True, create_graph=create_graph, allow_unused=True)[0]
        return torch.zeros_like(inp) if g is None else g


class FusedLinearization:
    """Jacobian products through a network's own forward-mode pass.

    For a map that offers ``fn.forward_jvp(x, tangent) -> (fn(x), J tangent)`` (``tangent``
    ``[K, B, *shape]``, K directions at once; :meth:`cdp.nets.MLPDenoiser.forward_jvp` and
    :class:`cdp.contraction.FiniteDifferences` give one),
    ``jacobian`` and the differentiable ``quad`` are plain forward computations: no double
    backward, no autograd-engine overhead. The iterative methods' graph-free ``jvp``/``vjp``
    go through one :class:`Linearization` (one forward, then backward passes only), which beats
    re-running the fused forward at every matvec. A map whose products come from extra forward
    rows (``graph_free_jvp``) takes its graph-free ``jvp`` from them too; only ``vjp`` uses autograd.
    """

    def __init__(self, fn: FlatFn, x: Tensor) -> None:
        self.fn, self.x = fn, x.detach().clone()
        self._lin: Linearization | None = None
        # products from forward rows (cdp.contraction.FiniteDifferences): never a double backward
        self.graph_free = bool(getattr(fn.fn, "graph_free_jvp", False))
        shape = fn.shape
        self._fwd_jvp = lambda tangent, **kw: fn.fn.forward_jvp(  # type: ignore[attr-defined]
            self.x.reshape(shape), tangent.reshape(tangent.shape[0], *shape), **kw)[1].reshape(tangent.shape)
        self._primal: Tensor | None = None

    def jvp(self, v: Tensor, create_graph: bool = False) -> Tensor:
        if create_graph:
            return self._fwd_jvp(v[None])[0]
        if self.graph_free:
            with torch.no_grad():
                if self._primal is None:  # an iterative search: the base rows once, then probe rows only
                    self._primal = self.fn.fn(self.x.reshape(self.fn.shape))
                return self._fwd_jvp(v[None], primal=self._primal)[0]
        return self._autograd().jvp(v)

    def vjp(self, u: Tensor, create_graph: bool = False) -> Tensor:
        return self._autograd().vjp(u, create_graph)

    def quad(self, v: Tensor) -> Tensor:
        if self._lin is not None and not self.graph_free:  # an iterative search already paid for the autograd forward
            return self._lin.quad(v)
        with torch.enable_grad():
            return (v * self._fwd_jvp(v[None])[0]).sum(-1)

    def _autograd(self) -> Linearization:
        if self._lin is None:
            self._lin = Linearization(self.fn, self.x)
        return self._lin

    def jacobian(self, create_graph: bool = False) -> Tensor:
        with torch.set_grad_enabled(create_graph):
            return self._fwd_jvp(unit_tangents(self.x)).permute(1, 2, 0)  # [D(j), B, D(i)] -> [B, i, j]


Ops = Linearization | FusedLinearization


def linearize(fn: SampleFn, x: Tensor) -> Ops:
    """Jacobian-product operators of ``fn`` at ``x [B, *shape]`` (flattened to ``[B, D]``),
    fused when ``fn`` has ``forward_jvp``."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Jacobian products need autograd: call outside torch.inference_mode() "
                           "(torch.no_grad() is fine)")
    flat = FlatFn(fn, x)
    xf = x.reshape(x.shape[0], -1)
    return FusedLinearization(flat, xf) if hasattr(fn, "forward_jvp") else Linearization(flat, xf)


def jacobian(fn: SampleFn, x: Tensor, create_graph: bool | None = None) -> Tensor:
    """Per-sample Jacobians ``[B, D, D]`` of a sample-wise map (flattened). Differentiable
    w.r.t. what ``fn`` closes over when grad is enabled."""
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    return linearize(fn, x).jacobian(create_graph=create_graph)


def unit_tangents(x: Tensor) -> Tensor:
    """The D unit tangents for every sample of a flat ``x [B, D]``: ``[D, B, D]``."""
    B, D = x.shape
    return torch.eye(D, dtype=x.dtype, device=x.device).unsqueeze(1).expand(D, B, D)


def top_eigvec_exact(J: Tensor, scale: Tensor | None = None, solver: str = "auto") -> tuple[Tensor, Tensor]:
    """``(top eigenvalue [B], unit eigenvector [B, D])`` of ``scale * sym(J)``, ``J [B, D, D]``.

    ``solver``: ``"eigh"`` (LAPACK / cuSOLVER), ``"squaring"`` (:func:`top_eigvec_squaring`: no
    host synchronisation, so it runs inside a CUDA graph), ``"auto"``: squaring on a GPU, eigh
    elsewhere (``torch.linalg.eigh`` checks its error codes on the host after every call, which
    on a GPU waits for the queue and cannot be captured)."""
    S = 0.5 * (J + J.transpose(1, 2))
    S = S if scale is None else scale[:, None, None] * S
    if solver == "auto":
        solver = "eigh" if S.device.type == "cpu" else "squaring"
    if solver == "squaring":
        return top_eigvec_squaring(S)
    if solver != "eigh":
        raise ValueError(f"solver must be 'auto', 'eigh' or 'squaring', got {solver!r}")
    evals, evecs = torch.linalg.eigh(S)
    return evals[:, -1], evecs[:, :, -1]


def top_eigvec_squaring(S: Tensor, squarings: int = 24) -> tuple[Tensor, Tensor]:
    """Top eigenpair of small symmetric matrices ``S [B, D, D]`` with tensor ops only (no data-
    dependent shapes or host reads).

    Shifted by a Gershgorin lower bound ``c <= lambda_min`` (less a small margin),
    ``M = S - c I`` is positive semi-definite with ``lambda_max - c`` its largest eigenvalue, so
    ``M^(2^k) / ||M^(2^k)||`` (``k`` normalised squarings) tends to ``u u^T`` for the top
    eigenvector ``u``: its largest column, normalised, is ``+-u``. The error falls like
    ``(mu_2 / mu_1)^(2^k)``, ``mu_i`` the shifted eigenvalues; a gap below float precision
    leaves a vector of the near-degenerate top space, whose Rayleigh quotient is still the top
    eigenvalue to that precision. Returns ``(v^T S v [B], v [B, D])``."""
    B, D = S.shape[0], S.shape[-1]
    eye = torch.eye(D, dtype=S.dtype, device=S.device)
    radius = (S.abs() * (1 - eye)).sum(-1)
    c = (S.diagonal(dim1=1, dim2=2) - radius).amin(-1)
    scale = S.abs().amax((1, 2)).clamp_min(torch.finfo(S.dtype).tiny)
    M = S - (c - 1e-3 * scale)[:, None, None] * eye  # the margin keeps M != 0 for S = a I
    tiny = torch.finfo(S.dtype).tiny
    for k in range(squarings):
        if k % 4 == 0:  # rescale every 4th squaring: entries grow at most D^15-fold in between (no overflow)
            M = M / M.abs().amax((1, 2), keepdim=True).clamp_min(tiny)
        M = M @ M
    col = M.norm(dim=1)  # [B, D]: column norms
    v = M.gather(2, col.argmax(-1)[:, None, None].expand(B, D, 1)).squeeze(2)
    v = _normalize(v)
    return torch.einsum("bi,bij,bj->b", v, S, v), v


class SymJacobian:
    """Matrix-free ``v -> scale * (J v + J^T v) / 2`` on flat samples ``[B, D]``."""

    def __init__(self, ops: Ops, scale: Tensor | None = None) -> None:
        self.ops, self.scale = ops, scale

    def __call__(self, v: Tensor) -> Tensor:
        out = 0.5 * (self.ops.jvp(v) + self.ops.vjp(v))
        return out if self.scale is None else self.scale[:, None] * out


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _rayleigh(mv: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
    return (v * mv(v)).sum(-1)


def _power(mv: Callable[[Tensor], Tensor], v0: Tensor, iters: int, shift: Tensor | None = None) -> Tensor:
    v = _normalize(v0)
    for _ in range(iters):
        w = mv(v) if shift is None else mv(v) - shift[:, None] * v
        v = _normalize(w)
    return v


def power_top_eigvec(mv: Callable[[Tensor], Tensor], x: Tensor, iters: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """Unit vectors ``[B, D]`` for the largest algebraic eigenvalue by shifted power iteration."""
    v = _power(mv, _randn_like(x, generator), iters)
    mu = _rayleigh(mv, v)
    neg = mu < 0
    if capturing() or neg.any():  # recording a graph: no host read, the second phase always runs
        # A negative eigenvalue dominates: on S - mu I (mu ~ lambda_min) the top eigenvalue is
        # lambda_max - mu >= 0 and dominates. Samples with mu >= 0 keep their vector.
        w = _power(mv, _randn_like(x, generator), iters, shift=torch.where(neg, mu, torch.zeros_like(mu)))
        v = torch.where(neg[:, None], w, v)
    return v


def lanczos_top_eigvec(mv: Callable[[Tensor], Tensor], x: Tensor, iters: int,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(top Ritz value [B], Ritz vector [B, D])`` after ``min(iters, D)`` Lanczos steps with
    full re-orthogonalisation. On breakdown (an invariant subspace found) it restarts with a
    random vector orthogonal to the basis; T stays ``Q^T S Q`` so Ritz values stay <= lambda_max."""
    B, D = x.shape
    k = min(iters, D)
    Q = x.new_zeros(B, k, D)
    Tm = x.new_zeros(B, k, k)
    q = _normalize(_randn_like(x, generator))
    tol = 1e3 * torch.finfo(x.dtype).eps
    for j in range(k):
        Q[:, j] = q
        w = mv(q)
        a = (w * q).sum(-1)
        Tm[:, j, j] = a
        if j == k - 1:
            break
        # full re-orthogonalisation (twice is enough, "twice is enough" of Parlett/Kahan)
        for _ in range(2):
            w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", Q[:, : j + 1], w), Q[:, : j + 1])
        b = w.norm(dim=-1)
        scale = torch.maximum(a.abs(), Tm[:, j, j - 1].abs() if j > 0 else a.abs()).clamp_min(1.0)
        broke = b <= tol * scale
        if capturing() or broke.any():  # recording a graph: no host read, the restart vector always drawn
            r = _randn_like(x, generator)
            for _ in range(2):
                r = r - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", Q[:, : j + 1], r), Q[:, : j + 1])
            w = torch.where(broke[:, None], r, w)
            b = torch.where(broke, torch.zeros_like(b), b)
        Tm[:, j, j + 1] = b
        Tm[:, j + 1, j] = b
        q = _normalize(w)
    top, y = top_eigvec_exact(Tm)  # Tm is symmetric: its own symmetric part
    return top, _normalize(torch.einsum("bkd,bk->bd", Q, y))


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def top_sym_eigvec(ops: Ops, method: str, iters: int, scale: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Search phase, no graph kept: ``(estimate [B], unit eigenvector [B, D])`` of the largest
    eigenvalue of ``scale * sym J``."""
    x = ops.x.detach()
    if method == "exact":
        return top_eigvec_exact(ops.jacobian(), scale)
    mv = SymJacobian(ops, scale)
    with torch.no_grad():
        if method == "lanczos":
            return lanczos_top_eigvec(mv, x, iters, generator)
        v = power_top_eigvec(mv, x, iters, generator)
        return _rayleigh(mv, v), v


def max_sym_eig(
    fn: SampleFn,
    x: Tensor,
    method: EigMethod = "auto",
    iters: int = 4,
    *,
    scale: Tensor | None = None,
    exact_max_dim: int = 8,
    generator: torch.Generator | None = None,
    return_vector: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``lambda_max(sym J)`` per sample, ``[B]``.

    fn: sample-wise map ``[B, *shape] -> [B, *shape]`` (condition on states by closure). If it
    has ``forward_jvp(x, tangent) -> (fn(x), J tangent)`` that fused pass is used.
    x: ``[B, *shape]``; action chunks ``[B, H, d]`` are flattened to ``D = H d``.
    scale: optional per-sample ``[B]`` factor on the operator: the result is
    ``lambda_max(scale_b * sym J_b)`` (``scale = -1`` gives ``-lambda_min``).
    With grad enabled the result is the differentiable Rayleigh quotient ``v^T J v`` (times
    ``scale``) of the eigenvector found; otherwise the search phase's estimate.
    ``return_vector`` adds the unit eigenvectors ``[B, *shape]``.
    """
    check_input(x)
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if scale is not None and (not isinstance(scale, Tensor) or scale.shape != x.shape[:1]):
        raise ValueError(f"scale must be a tensor [B] = [{x.shape[0]}], got {getattr(scale, 'shape', scale)}")
    method = resolve_method(method, x[0].numel(), exact_max_dim)
    ops = linearize(fn, x)
    lam, v = top_sym_eigvec(ops, method, iters, scale, generator)
    if torch.is_grad_enabled():
        # Hellmann-Feynman: v held fixed, lambda = v^T J v carries the gradient
        lam = ops.quad(v)
        lam = lam if scale is None else scale * lam
    else:
        lam = lam.detach()
    if not capturing() and not torch.isfinite(lam).all():
        raise FloatingPointError("max_sym_eig: non-finite eigenvalue (fn produced NaN/inf derivatives)")
    return (lam, v.reshape(x.shape)) if return_vector else lam
