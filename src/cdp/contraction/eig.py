"""Largest algebraic eigenvalue of the symmetric Jacobian of a sample-wise map.

For ``fn: [B, *shape] -> [B, *shape]`` acting on each sample independently and
``J_b = d fn(x)_b / d x_b`` (``D x D``, ``D = prod(shape)``), :func:`max_sym_eig` returns
``lambda_max((J_b + J_b^T) / 2)`` for every b: the *largest algebraic* eigenvalue, which a
strongly negative eigenvalue must not hide (plain power iteration would return the one of
largest magnitude).

Cost model (DESIGN.md §3). The eigenvector ``v`` is searched for without a graph; the value
returned is then the Rayleigh quotient ``v^T J v`` from one differentiable JVP, whose gradient
w.r.t. the network's parameters is exact for a simple eigenvalue (Hellmann-Feynman:
``d lambda = v^T dA v``; the skew part of J drops out of ``v^T J v``).

Methods (``S = sym J``):
  ``exact``   D JVPs (vmapped over the basis) build J; ``eigh``. Exact; best for D <= ~8.
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

from typing import Callable, Literal

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

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
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def resolve_method(method: str, dim: int, exact_max_dim: int) -> str:
    if method not in EIG_METHODS:
        raise ValueError(f"method must be one of {EIG_METHODS}, got {method!r}")
    if method == "auto":
        return "exact" if dim <= exact_max_dim else "lanczos"
    return method


def jacobian(fn: FlatFn, x: Tensor) -> Tensor:
    """Per-sample Jacobians ``[B, D, D]`` of a flat sample-wise map, by D vmapped JVPs
    (tangent e_j on every sample at once gives column j of every block). Differentiable
    w.r.t. anything ``fn`` closes over when called with grad enabled."""
    B, D = x.shape
    basis = torch.eye(D, dtype=x.dtype, device=x.device).unsqueeze(1).expand(D, B, D)
    cols = vmap(lambda e: jvp(fn, (x,), (e,))[1])(basis)  # [D(j), B, D(i)] = J[b, i, j]
    return cols.permute(1, 2, 0)


class SymJacobian:
    """Matrix-free ``v -> (J v + J^T v) / 2`` on flat samples ``[B, D]``. The forward and its
    graph for the VJP are built once; each matvec is then one JVP and one backward pass."""

    def __init__(self, fn: FlatFn, x: Tensor) -> None:
        self.fn, self.x = fn, x
        _, self._vjp = vjp(fn, x)

    def __call__(self, v: Tensor) -> Tensor:
        jv = jvp(self.fn, (self.x,), (v,))[1]
        (jtv,) = self._vjp(v)
        return 0.5 * (jv + jtv)


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
    if neg.any():
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
        if broke.any():
            r = _randn_like(x, generator)
            for _ in range(2):
                r = r - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", Q[:, : j + 1], r), Q[:, : j + 1])
            w = torch.where(broke[:, None], r, w)
            b = torch.where(broke, torch.zeros_like(b), b)
        Tm[:, j, j + 1] = b
        Tm[:, j + 1, j] = b
        q = _normalize(w)
    evals, evecs = torch.linalg.eigh(Tm)
    return evals[:, -1], _normalize(torch.einsum("bkd,bk->bd", Q, evecs[:, :, -1]))


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def top_sym_eigvec(fn: FlatFn, x: Tensor, method: str, iters: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Search phase, without a graph: ``(estimate [B], unit eigenvector [B, D])``."""
    with torch.no_grad():
        if method == "exact":
            J = jacobian(fn, x)
            evals, evecs = torch.linalg.eigh(0.5 * (J + J.transpose(1, 2)))
            return evals[:, -1], evecs[:, :, -1]
        mv = SymJacobian(fn, x)
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
    exact_max_dim: int = 8,
    generator: torch.Generator | None = None,
    return_vector: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``lambda_max(sym J)`` per sample, ``[B]``.

    fn: sample-wise map ``[B, *shape] -> [B, *shape]`` (condition on states by closure).
    x: ``[B, *shape]``; action chunks ``[B, H, d]`` are flattened to ``D = H d``.
    With grad enabled the result is the differentiable Rayleigh quotient ``v^T J v`` of the
    eigenvector found (one JVP with a graph); otherwise the search phase's estimate.
    ``return_vector`` adds the unit eigenvectors ``[B, *shape]``.
    """
    check_input(x)
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    B = x.shape[0]
    flat = FlatFn(fn, x)
    xf = x.reshape(B, -1)
    method = resolve_method(method, xf.shape[1], exact_max_dim)
    lam, v = top_sym_eigvec(flat, xf.detach(), method, iters, generator)
    if torch.is_grad_enabled():
        lam = (v * jvp(flat, (xf,), (v,))[1]).sum(-1)
    if not torch.isfinite(lam).all():
        raise FloatingPointError("max_sym_eig: non-finite eigenvalue (fn produced NaN/inf derivatives)")
    return (lam, v.reshape(x.shape)) if return_vector else lam
