"""How close the term's eigenvalue estimates come to the exact largest eigenvalue on trained
imitation networks (16 x d action chunks: D = 32 on MultiReach, 112 on Lift).

Each backbone is a Diffusion Policy trained for ``--train-steps`` on MultiReach demonstrations
made on the spot (the network the term sees in training), then, at ``--samples`` (state, noisy
chunk, level) triples drawn as training draws them, the largest eigenvalue of
``sign(h) sym J`` is estimated by each method and compared with the exact one (the full
Jacobian's ``eigvalsh``). Reported: the share of samples within 2% and 5% of the exact value
(relative to its magnitude), the median relative error, and the time of one estimate for the
whole batch relative to Lanczos with 4 iterations (the bundled trainers' estimator for chunks;
the library's ``ContractionConfig`` takes the exact eigenvalue by finite differences).

    python benchmarks/estimator_accuracy.py [--quick] [--samples 256] [--train-steps 500]
    python benchmarks/estimator_accuracy.py --data data/il/lift-image_ph.hdf5   # Lift, 16 x 7 chunks
    python benchmarks/estimator_accuracy.py --data data/il/lift_ph.hdf5 --subspaces

``--subspaces``: which search subspaces hold the top eigenvector, in exact arithmetic: each
sample's full Jacobian ``J`` (float64), and the top Ritz value of ``sym J`` over a Krylov space of
``sym J`` (Lanczos: a product with ``J`` and one with ``J^T`` per vector), of ``J`` alone (Arnoldi:
products with ``J`` only, the ones finite differences give on forward passes), and block versions
of both (``b`` random starting vectors, ``q`` blocks: ``q`` passes of ``b`` rows per sample).
No timing: only whether a cheaper search could be as accurate.

``--data``: a robomimic-layout HDF5 of the Lift task (``cdp il make-data lift ph`` or
``lift-image ph``; its low-dim keys are read), so the chunks are 16 x 7 (D = 112) as in the
official robomimic configs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import parse

from cdp.contraction import FiniteDifferences, jacobian, max_sym_eig
from cdp.data.robomimic import read_robomimic
from cdp.contraction.loss import NetAt
from cdp.il.policy import DiffusionPolicy, DiffusionPolicyConfig
from cdp.il.tasks import get_task
from cdp.il.windows import ChunkWindows

BACKBONES = {"UNet 32-64-128": dict(backbone="unet", unet_dims=(32, 64, 128)),
             "DiT 64 x 4": dict(backbone="dit", dit_width=64, dit_depth=4, dit_heads=4)}
METHODS = {"lanczos 4": ("lanczos", 4), "lanczos 8": ("lanczos", 8), "lanczos 16": ("lanczos", 16),
           "lanczos 32": ("lanczos", 32), "power 8": ("power", 8), "exact (the D-column Jacobian)": ("exact", 1),
           # products="fd": the eigenvector from a one-sided difference Jacobian, the value the term
           # trains on (the Rayleigh quotient by a forward / central difference, with its graph)
           "exact, finite differences (central)": ("exact-fd", "central"),
           "exact, finite differences (forward)": ("exact-fd", "forward"),
           # a warm start from earlier batches: Rayleigh-Ritz in the span of the top k principal
           # directions of another batch's exact top eigenvectors (k one-sided difference rows per
           # sample; the same network, so no drift: an optimistic case)
           "warm subspace, k = 16": ("subspace", 16), "warm subspace, k = 32": ("subspace", 32)}


def trained_policy(kw: dict, steps: int, data: str | None, seed: int = 0) -> tuple[DiffusionPolicy, ChunkWindows]:
    torch.manual_seed(seed)
    task = get_task("lift" if data else "reach")
    demos = read_robomimic(data, task.obs_keys) if data else task.make_demos(60, "ph", seed=seed)
    pol = DiffusionPolicy(DiffusionPolicyConfig(obs_keys=task.obs_keys, obs_dim=task.obs_dim,
                                                action_dim=task.action_dim, **kw))
    w = ChunkWindows(demos, task.obs_keys, pol.config.n_obs_steps, pol.config.horizon, pol.action_start)
    pol.set_stats(w.obs.numpy(), w.actions.numpy())
    opt = torch.optim.AdamW(pol.parameters(), 1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, act = w.batch(torch.as_tensor(rng.integers(0, len(w), 64)))
        loss = pol.compute_loss(obs, act)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pol.eval(), w


def draw(pol: DiffusionPolicy, w: ChunkWindows, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``n`` (noisy chunk, level, conditioning, sign of h) draws as training draws them."""
    g = torch.Generator().manual_seed(seed)
    obs, act = w.batch(torch.as_tensor(np.random.default_rng(seed).integers(0, len(w), n)))
    x0, cond = pol.act_norm(act), pol.cond(obs)
    T = pol.config.train_steps
    t = torch.randint(1, T + 1, (n,), generator=g).float() / T
    a_t = pol.schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    _, h = pol.schedule.sampling_ode_coefficients(t, pol.config.prediction)
    return a_t, t, cond, torch.sign(h)


def warm_basis(pol: DiffusionPolicy, w: ChunkWindows, n: int, k: int) -> torch.Tensor:
    """``[D, k]``: the top ``k`` principal directions of the exact top eigenvectors of ``n`` other
    draws (another seed) on the same network."""
    a_t, t, cond, sgn = draw(pol, w, n, seed=7)
    with torch.no_grad():
        v = max_sym_eig(lambda a: pol.net(a, t, cond), a_t, "exact", 1, scale=sgn, exact_max_dim=10**6,
                        return_vector=True)[1]
    return torch.linalg.svd(v.reshape(n, -1).T, full_matrices=False)[0][:, :k]


def subspace_estimate(pol: DiffusionPolicy, a_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      sgn: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Top Ritz value of ``sign(h) sym J`` in ``span(basis)`` per sample, from ``k`` one-sided
    difference rows (``Q^T J^T Q = (Q^T J Q)^T``: no transpose product needed)."""
    B, k = a_t.shape[0], basis.shape[1]
    tangent = basis.T[:, None, :].expand(k, B, -1).reshape(k, *a_t.shape)
    with torch.no_grad():
        jq = FiniteDifferences(pol.net).forward_jvp(a_t, t, cond, tangent=tangent)[1].reshape(k, B, -1)
    small = torch.einsum("dk,lbd->bkl", basis, jq)  # [B, k, k]: Q^T J Q
    return top_sym(sgn[:, None, None] * small)


def top_sym(M: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each ``sym M`` (``M [B, k, k]``): with ``M = Q^T J Q``, the top Ritz
    value of ``sym J`` over the span of ``Q``'s orthonormal columns."""
    return torch.linalg.eigvalsh(0.5 * (M + M.transpose(1, 2)))[:, -1]


def _orthogonal_rest(Q: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``W [B, j, D]`` made orthonormal and orthogonal to the rows of ``Q [B, k, D]``."""
    for _ in range(2):  # twice is enough
        W = W - torch.einsum("bkd,bjk->bjd", Q, torch.einsum("bkd,bjd->bjk", Q, W))
    return torch.linalg.qr(W.transpose(1, 2))[0].transpose(1, 2)


def krylov_ritz(J: torch.Tensor, op: str, block: int, blocks: int, g: torch.Generator) -> torch.Tensor:
    """Top Ritz value of ``sym J`` (``J [B, D, D]``) over ``span{V, A V, ..., A^(blocks-1) V}``,
    ``V`` ``block`` random orthonormal vectors; ``A = sym J`` (``op="sym"``) or ``J`` (``"J"``)."""
    A = 0.5 * (J + J.transpose(1, 2)) if op == "sym" else J
    V = _orthogonal_rest(J.new_zeros(J.shape[0], 0, J.shape[1]),
                         torch.randn(J.shape[0], block, J.shape[1], dtype=J.dtype, generator=g))
    Q = V
    for _ in range(blocks - 1):
        V = _orthogonal_rest(Q, torch.einsum("bde,bje->bjd", A, V))
        Q = torch.cat([Q, V], 1)
    return top_sym(torch.einsum("bkd,bde,ble->bkl", Q, J, Q))


SUBSPACES = {**{f"{name} {k}": (op, 1, k) for k in (8, 16, 24, 32)
                for name, op in (("lanczos (sym J)", "sym"), ("arnoldi (J alone)", "J"))},
             **{f"block {name} {b} x {q}": (op, b, q) for b, q in ((4, 4), (8, 3), (8, 4), (16, 3))
                for name, op in (("lanczos (sym J)", "sym"), ("arnoldi (J alone)", "J"))}}


def subspaces(args: argparse.Namespace) -> None:
    print("| backbone | search subspace | dimension | within 2% | within 5% | median rel. error |\n"
          "|---|---|---:|---:|---:|---:|")
    for name, kw in BACKBONES.items():
        pol, w = trained_policy(kw, args.train_steps, args.data)
        a_t, t, cond, sgn = draw(pol, w, args.samples, seed=1)
        with torch.no_grad():
            J = sgn[:, None, None].double() * jacobian(lambda a: pol.net(a, t, cond), a_t, create_graph=False).double()
        exact = top_sym(J)
        for label, (op, b, q) in SUBSPACES.items():
            est = krylov_ritz(J, op, b, q, torch.Generator().manual_seed(2))
            e = ((est - exact).abs() / exact.abs().clamp_min(1e-12)).numpy()
            print(f"| {name} | {label} | {b * q} | {np.mean(e <= 0.02):.0%} | {np.mean(e <= 0.05):.0%} "
                  f"| {np.median(e):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--data", default=None, help="a Lift HDF5 (robomimic layout): 16 x 7 chunks instead of MultiReach's 16 x 2")
    ap.add_argument("--subspaces", action="store_true",
                    help="which Krylov subspaces hold the top eigenvector (exact arithmetic; no timing)")
    args, header = parse(ap)
    if args.quick:
        args.samples, args.train_steps = 64, 100
    where = f"Lift ({args.data}, chunk 16 x 7)" if args.data else "MultiReach (chunk 16 x 2)"
    print(f"{header}; {args.samples} samples, networks trained {args.train_steps} steps on {where}\n")
    if args.subspaces:
        return subspaces(args)
    print("| backbone | method | within 2% | within 5% | median rel. error | time vs lanczos 4 |\n"
          "|---|---|---:|---:|---:|---:|")
    for name, kw in BACKBONES.items():
        pol, w = trained_policy(kw, args.train_steps, args.data)
        a_t, t, cond, sgn = draw(pol, w, args.samples, seed=1)
        bases = {k: warm_basis(pol, w, args.samples, k) for m, k in METHODS.values() if m == "subspace"}

        def fn(a):
            return pol.net(a, t, cond)

        with torch.no_grad():
            exact = max_sym_eig(fn, a_t, "exact", 1, scale=sgn, exact_max_dim=10**6)
        times, errs = {}, {}
        for label, (method, iters) in METHODS.items():
            est = None
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                if method == "subspace":
                    est = subspace_estimate(pol, a_t, t, cond, sgn, bases[iters])
                elif method == "exact-fd":
                    est = max_sym_eig(NetAt(FiniteDifferences(pol.net, scheme=iters), t, (cond,)), a_t, "exact", scale=sgn,
                                      exact_max_dim=10**6).detach()
                else:
                    with torch.no_grad():
                        est = max_sym_eig(fn, a_t, method, iters, scale=sgn, generator=torch.Generator().manual_seed(2),
                                          exact_max_dim=10**6)
                runs.append(time.perf_counter() - t0)
            times[label] = statistics.median(runs)
            errs[label] = ((est - exact).abs() / exact.abs().clamp_min(1e-12)).numpy()
        base = times["lanczos 4"]
        for label, e in errs.items():
            print(f"| {name} | {label} | {np.mean(e <= 0.02):.0%} | {np.mean(e <= 0.05):.0%} | {np.median(e):.3f} "
                  f"| {times[label] / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
