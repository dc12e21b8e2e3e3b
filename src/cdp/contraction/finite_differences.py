"""Jacobian-vector products of any denoiser from its forward passes alone.

:class:`FiniteDifferences` wraps a network ``net_fn(a_t, t, *cond)`` and gives it the
``forward_jvp`` the contraction term's fast path uses, for any network: no forward-mode formula,
no double backward, so attention kernels, custom autograd Functions and compiled modules work.
The tangent rows ride in the same forward call as the denoising rows:

    J tau ~ (n(a + h tau) - n(a - h tau)) / (2 h)      (central, the default)
    J tau ~ (n(a + h tau) - n(a)) / h                  (forward, ``scheme="forward"``)

with ``h = eps / |tau|`` per row, so each probe moves the action by ``eps``. A difference is
differentiable w.r.t. the parameters like any forward pass: the gradient of the Rayleigh quotient
``v^T J v`` needs one ordinary backward. The central difference's error is ``O(eps^2)`` (third
derivatives) plus ``O(u / eps)`` rounding (``u`` the dtype's unit roundoff), balanced by the
default ``eps = (3 u)^(1/3)`` (5.6e-3 in float32, 6.9e-6 in float64). The forward difference
shares ``n(a)`` with the denoising rows, so the term adds one row per regularised sample to the
training pass instead of two; its error is ``O(eps) + O(u / eps)``, default ``eps = sqrt(u)``
(2.4e-4 in float32), about 30 times the central one's in float32. The eigenvector search takes
forward differences without a graph under either scheme (the Rayleigh quotient's error is
quadratic in the vector's).

The network must act on each sample independently: batch statistics (BatchNorm in training mode)
or dropout would mix or perturb the probe rows differently from their base row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..capture import capturing
from ..diffusion.parameterization import NetFn


def default_eps(dtype: torch.dtype, central: bool) -> float:
    """The probe length balancing truncation and rounding error for ``dtype``."""
    u = torch.finfo(dtype).eps / 2
    return (3 * u) ** (1 / 3) if central else math.sqrt(u)


def _module_of(net_fn: NetFn) -> nn.Module | None:
    """The module behind ``net_fn``: itself, a bound method's owner, or a wrapper's ``model`` /
    ``net`` (as :class:`~cdp.diffusion.from_diffusers.DiffusersDenoiser`); None for a closure."""
    found = [net_fn, getattr(net_fn, "__self__", None), getattr(net_fn, "model", None), getattr(net_fn, "net", None)]
    return next((m for m in found if isinstance(m, nn.Module)), None)


def finite_differences_apply(net_fn: NetFn) -> bool:
    """Whether ``net_fn`` is known to act on each sample alone: a module (see :func:`_module_of`)
    with no BatchNorm in training mode and no active dropout. A closure is not known to."""
    module = _module_of(net_fn)
    if module is None:
        return False
    try:
        _check_per_sample(module)
    except ValueError:
        return False
    return True


def _check_per_sample(net_fn: NetFn) -> None:
    """A module found in ``net_fn`` must not mix or perturb rows; a plain closure cannot be
    inspected."""
    module = _module_of(net_fn)
    if module is None:
        return
    for m in module.modules():
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"FiniteDifferences: {type(module).__name__} has a {type(m).__name__} in training mode; "
                             "its batch statistics would mix the probe rows (use GroupNorm/LayerNorm or eval mode)")
        if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ValueError(f"FiniteDifferences: {type(module).__name__} has an active {type(m).__name__} "
                             f"(p={m.p}); it would perturb the probe rows independently (set p=0 or eval mode)")


#: how the differentiable products are taken (FiniteDifferences.scheme)
SCHEMES: tuple[str, ...] = ("forward", "central")


class FiniteDifferences:
    """``net_fn`` with a ``forward_jvp`` from finite differences (see the module docstring).

    eps: the probe length in action units (``None``: :func:`default_eps` for the input's dtype,
    central or one-sided as used). scheme: ``"central"`` (two extra rows per tangent) or
    ``"forward"`` (one, sharing the base row: cheaper, ~30x the error in float32) for the products
    taken with grad enabled. Calling the wrapper calls ``net_fn``.
    """

    #: products come from extra forward rows, so the contraction term looks for the eigenvector
    #: without a graph and differentiates one tangent (never all ``D`` with a graph)
    graph_free_jvp = True

    def __init__(self, net_fn: NetFn, eps: float | None = None, scheme: str = "central") -> None:
        if isinstance(net_fn, FiniteDifferences):
            net_fn = net_fn.net_fn
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        _check_per_sample(net_fn)
        self.net_fn, self.eps, self.scheme = net_fn, eps, scheme

    def __call__(self, a_t: Tensor, t: Tensor, *cond: Tensor) -> Tensor:
        return self.net_fn(a_t, t, *cond)

    def forward_jvp(self, a_t: Tensor, t: Tensor, *cond: Tensor, tangent: Tensor, index: Tensor | None = None,
                    central: bool | None = None, primal: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(net_fn(a_t) [B, ...], J tangent [K, n, ...])`` from one call on ``B + 2 K n`` rows
        (central) or ``B + K n`` (one-sided).

        tangent: ``[K, n, *action_shape]``, K directions for the rows ``index`` ``[n]`` (every row
        when None). central: default ``scheme == "central"`` while grad is enabled (the
        differentiable term), one-sided otherwise (the search). primal: ``net_fn(a_t)`` when the
        caller already has it (an iterative search, or the denoising pass; with its graph, if
        any): the call then runs on the probe rows alone and returns it as the output."""
        B, shape = a_t.shape[0], a_t.shape[1:]
        rows = B if index is None else index.shape[0]
        if tangent.ndim < 2 or tangent.shape[1:] != (rows, *shape):
            raise ValueError(f"tangent must be [K, {rows}, {', '.join(map(str, shape))}], got {tuple(tangent.shape)}")
        if primal is not None and primal.shape != a_t.shape:
            raise ValueError(f"primal must be net_fn(a_t), shape {tuple(a_t.shape)}; got {tuple(primal.shape)}")
        if central is None:
            central = self.scheme == "central" and torch.is_grad_enabled()
        K = tangent.shape[0]
        eps = self.eps if self.eps is not None else default_eps(a_t.dtype, central)
        tan = tangent.reshape(K, rows, -1)
        h = eps / tan.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(tan.dtype).tiny)  # [K, n, 1]
        step = (h * tan).reshape(K * rows, *shape)
        t = torch.as_tensor(t, dtype=a_t.dtype, device=a_t.device).expand(B)
        pick = (lambda x: x) if index is None else (lambda x: x[index])
        base = pick(a_t).repeat(K, *([1] * len(shape)))  # [K n, ...], k-major like the tangent
        probes = [base + step, base - step] if central else [base + step]
        reps = len(probes) * K
        first = B if primal is None else 0  # the base rows run in this call unless given

        def tile(x: Tensor) -> Tensor:
            probe = pick(x).repeat(reps, *([1] * (x.ndim - 1)))
            return torch.cat([x, probe]) if first else probe

        y = self.net_fn(torch.cat([a_t, *probes] if first else probes), tile(t), *(tile(c) for c in cond))
        if y.shape[0] != first + reps * rows or y.shape[1:] != shape:
            raise ValueError(f"the network must map [B, *shape] to the same shape; got {tuple(y.shape)} "
                             f"for input {(first + reps * rows, *shape)}")
        if primal is not None:
            y = torch.cat([primal, y])
        if not capturing() and not torch.isfinite(y).all():  # a host read: not while a graph records
            raise FloatingPointError("FiniteDifferences: the network returned NaN or inf on the probe rows")
        out, plus = y[:B], y[B:B + K * rows]
        other = y[B + K * rows:] if central else pick(out).repeat(K, *([1] * len(shape)))
        scale = (2 * h if central else h).reshape(K * rows, *([1] * len(shape)))
        return out, ((plus - other) / scale).reshape(K, rows, *shape)
