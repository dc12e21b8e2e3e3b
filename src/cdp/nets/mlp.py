"""The MLP denoiser of DQL / EDP: (noisy action, time embedding, state) -> eps or x0."""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor, nn


def _tanh_softplus_(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(tanh(softplus(z)), e^z, e^z (e^z + 2) + 2)`` from one ``exp``, the arithmetic in place
    (no autograd): with ``n = e^z (e^z + 2)``, ``tanh(softplus(z)) = n / (n + 2)``. ``exp`` is
    clamped at 20, where the ratio is 1 in float32. Several times cheaper on CPU than ``softplus``
    (a ``log1p`` kernel) then ``tanh``, and fresh temporaries per op would cost more than the ops."""
    e = z.clamp(max=20.0).exp_()
    n = (e + 2).mul_(e)
    den = n + 2
    return n.div_(den), e, den


def _mish_derivative(z: Tensor) -> Tensor:
    """``mish'(z)`` from differentiable ops (for derivatives of the derivative)."""
    th = torch.tanh(F.softplus(z))
    return th + z * torch.sigmoid(z) * (1 - th * th)


class _MishFn(torch.autograd.Function):
    """``mish(z)`` for training: the forward from one ``exp`` (:func:`_tanh_softplus_`) also
    gives ``mish'(z)``, so the backward is one multiply. ``softplus`` then ``tanh`` and their three
    backward kernels cost more on the CPU (``tanh`` alone is ~3x an ``exp`` on an AVX2 CPU), and
    a whole DQL update is 0-8% faster this way. A derivative of the backward (``create_graph``, ``jacrev``
    of ``jacrev``) recomputes ``mish'`` from differentiable ops, so every order stays exact;
    forward mode never comes here (:class:`Mish` takes the composite formula under it)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        th, e, den = _tanh_softplus_(z)
        d1 = torch.addcmul(th, z, (e + 1).mul_(e).mul_(4).div_(den).div_(den))  # th + z d th/dz
        return th.mul_(z), d1

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, gy: Tensor, _: Tensor) -> Tensor:  # type: ignore[override]
        z, d1 = ctx.saved_tensors
        return gy * (_mish_derivative(z) if torch.is_grad_enabled() else d1)


class Mish(nn.Module):
    """``x * tanh(softplus(x))``: same values as ``nn.Mish`` (to float32 rounding), with
    derivatives of every order that batch (``nn.Mish``'s derivative goes through
    ``mish_backward``, which batched backward passes run as a slow per-sample loop). Both paths
    compute from one ``exp``: with autograd through :class:`_MishFn`, without it (sampling) in
    place. Under forward-mode AD (``torch.func.jvp``, ``jacfwd``, dual tensors) it keeps the
    composite formula, whose derivatives of every order torch knows."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # not x.requires_grad: under torch.func transforms it can say False
            if forward_ad._current_level >= 0:  # inside a dual level
                return x * torch.tanh(F.softplus(x))
            return _MishFn.apply(x)[0]  # while the parameters still need this graph
        if x.numel() <= 2048:  # one state's action selection: one kernel beats seven launches
            return F.mish(x)  # (torch's kernel is ~4x slower per element, so only when small)
        return _tanh_softplus_(x)[0].mul_(x)


def mlp(inp: int, out: int, hidden: int = 256, depth: int = 3) -> nn.Sequential:
    """``depth`` Linear + Mish layers of width ``hidden``, then a Linear to ``out`` (DQL/EDP's 3 x 256)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(inp, hidden), Mish()]
        inp = hidden
    layers.append(nn.Linear(inp, out))
    return nn.Sequential(*layers)


class _MishJvp(torch.autograd.Function):
    """``(z, z') -> (mish(z), mish'(z) z')`` with a hand-written backward.

    Autograd through the composite formula records ~20 small ops per layer; here the backward is
    ``g_z = g_y mish'(z) + g_y' z' mish''(z)``, ``g_z' = g_y' mish'(z)``, from values saved in the
    forward. First-order only (``create_graph`` through it is not supported), which is all the
    Hellmann-Feynman gradient of the contraction term needs. The arithmetic is in place: on a CPU
    a fresh ``[256, 256]`` temporary per op cost more than the op itself (2.4x the time for the
    same ~25 ops, measured).
    """

    generate_vmap_rule = True  # seeds stacked under vmap (cdp.rl.stacked)

    @staticmethod
    def forward(z: Tensor, zd: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        th, e, den = _tanh_softplus_(z)
        g = (e + 1).mul_(e).mul_(4).div_(den).div_(den)  # d tanh(softplus(z)) / dz
        d1 = torch.addcmul(th, z, g)  # mish' = th + z g
        # mish'' = 2 g + z g' with g' = g (1 - sg (1 + 2 th)), sg = sigmoid(z); [n, width], cheap
        # beside the [K, n, width] tangents
        sg = e.div_(e + 1)
        d2 = sg.mul_(th * 2 + 1).neg_().add_(1).mul_(z).add_(2).mul_(g)
        return th.mul_(z), d1 * zd, d1, d2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.mark_non_differentiable(output[2], output[3])
        ctx.save_for_backward(inputs[1], output[2], output[3])

    @staticmethod
    def backward(ctx, gy: Tensor, gyd: Tensor, *_: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        zd, d1, d2 = ctx.saved_tensors
        gz = (gyd * zd).mul_(d2)
        if zd.ndim > d1.ndim:  # K tangent directions share one primal z: sum their contributions
            gz = gz.sum(0)
        return torch.addcmul(gz, gy, d1), gyd * d1  # not in place: vmap batches addcmul, not addcmul_


class SinusoidalEmbedding(nn.Module):
    """``[B] -> [B, dim]`` sin/cos features of ``scale * t`` (t in [0, 1]; ``scale = 1000``
    puts continuous time on the usual discrete-step scale)."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class MLPDenoiser(nn.Module):
    """Mish MLP (``depth x hidden``, 3 x 256 by default) on ``[a_t, emb(t), state]``.

    action_shape: ``d`` or a shape such as ``(H, d)`` (flattened inside). state_dim: 0 for an
    unconditional model. Output has the action's shape; whether it means eps or x0 is the
    training loss's choice.
    """

    def __init__(self, action_shape: int | tuple[int, ...], state_dim: int = 0, hidden: int = 256,
                 depth: int = 3, t_dim: int = 16) -> None:
        super().__init__()
        self.action_shape = (action_shape,) if isinstance(action_shape, int) else tuple(action_shape)
        if any(n < 1 for n in self.action_shape) or state_dim < 0 or hidden < 1 or depth < 1:
            raise ValueError("action_shape, hidden and depth must be positive and state_dim >= 0")
        self.state_dim = state_dim
        d = math.prod(self.action_shape)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), Mish(),
                                      nn.Linear(2 * t_dim, t_dim))
        layers: list[nn.Module] = []
        width = d + t_dim + state_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), Mish()]
            width = hidden
        layers.append(nn.Linear(width, d))
        self.mid = nn.Sequential(*layers)

    def forward(self, a_t: Tensor, t: Tensor, state: Tensor | None = None) -> Tensor:
        """a_t: ``[B, *action_shape]``, t: ``[B]`` in [0, 1], state: ``[B, state_dim]``."""
        return self.mid(self._input(a_t, t, state)).reshape(a_t.shape)

    def forward_jvp(self, a_t: Tensor, t: Tensor, state: Tensor | None = None, *,
                    tangent: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Output and its directional derivatives w.r.t. the action in one fused pass.

        tangent: ``[K, n, *action_shape]``, K directions for the rows ``index`` (``[n]``) of the
        batch, or for every row (``n = B``) when ``index`` is None. Returns
        ``(out [B, *action_shape], J tangent [K, n, *action_shape])``, differentiable w.r.t. the
        parameters. The tangent rides along the forward: ``z' = W z'`` through each linear layer
        (no bias), ``z' = mish'(z) z'`` through each activation. :mod:`cdp.contraction` uses it
        instead of autograd's double backward, and the fused CDP step gets the denoising output
        and the Rayleigh quotient's ``J v`` from one pass.
        """
        B, K = a_t.shape[0], tangent.shape[0]
        rows = B if index is None else index.shape[0]
        if tangent.shape[1:] != (rows, *self.action_shape):
            raise ValueError(f"tangent must be [K, {rows}, {', '.join(map(str, self.action_shape))}], "
                             f"got {tuple(tangent.shape)}")
        h = self._input(a_t, t, state)
        first = self.mid[0]
        assert isinstance(first, nn.Linear)
        d = math.prod(self.action_shape)
        hd = tangent.reshape(K, rows, d) @ first.weight[:, :d].T  # only the action columns see the tangent
        h = first(h)
        for layer in list(self.mid)[1:]:
            if isinstance(layer, Mish):
                if index is None:
                    h, hd = _MishJvp.apply(h, hd)[:2]
                else:
                    hd = _MishJvp.apply(h[index], hd)[1]
                    h = layer(h)
            else:
                h, hd = layer(h), hd @ layer.weight.T
        return h.reshape(a_t.shape), hd.reshape(tangent.shape)

    def _input(self, a_t: Tensor, t: Tensor, state: Tensor | None) -> Tensor:
        B = a_t.shape[0]
        if tuple(a_t.shape[1:]) != self.action_shape:
            raise ValueError(f"a_t has shape {tuple(a_t.shape)}, expected [B, {', '.join(map(str, self.action_shape))}]")
        if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:  # one time for all rows (samplers): embed once
            emb = self.time_mlp(t[:1]).expand(B, -1)
        else:
            emb = self.time_mlp(t).expand(B, -1)
        parts = [a_t.reshape(B, -1), emb]
        if self.state_dim:
            if state is None or state.shape != (B, self.state_dim):
                got = None if state is None else tuple(state.shape)
                raise ValueError(f"state must be [B, {self.state_dim}] = [{B}, {self.state_dim}], got {got}")
            parts.append(state)
        return torch.cat(parts, dim=-1)
