"""Data-parallel training over ``torch.distributed``: one run on several processes (GPUs or CPU
processes, on one machine or several), launched by ``torchrun``.

Every process holds the whole model and sees ``1 / world`` of each batch. Gradients are averaged
by one all-reduce of a flat buffer after the backward pass, so the update is the one a single
process makes on the whole batch. The gradients are averaged by hand rather than through
``DistributedDataParallel``'s module wrapper: the contraction term differentiates through the
network's Jacobian (double backward, or the fused tangent pass), which the wrapper's hooks do
not support; computing it on the plain module keeps one code path for one process and many.

Random draws that shape the update (the batch indices, the diffusion times and noises) come from
generators seeded alike in every process and drawn for the whole batch, each process keeping its
rows: a run gives the same weights on any number of processes, and resumes on another number.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """This process's place in the run: ``rank`` of ``world`` processes; ``device`` its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (config, logs, checkpoints, evaluations)."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's share of a batch of ``n`` rows (``n`` must divide by ``world``)."""
        if n % self.world:
            raise ValueError(f"batch size {n} does not divide among {self.world} processes")
        b = n // self.world
        return slice(self.rank * b, (self.rank + 1) * b)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes (one all-reduce)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset: offset + n].view_as(p).clone()
            offset += n

    def average(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-process 0-d metrics averaged over the processes (what the whole batch's are)."""
        if self.world == 1 or not values:
            return values
        import torch.distributed as dist

        flat = torch.stack([v.detach().to(torch.float64) for v in values.values()])
        dist.all_reduce(flat)
        return dict(zip(values, flat / self.world))

    def broadcast_flag(self, ok: bool) -> bool:
        """Rank 0's ``ok`` on every process (the others' argument is ignored)."""
        if self.world == 1:
            return ok
        import torch.distributed as dist

        box = [ok]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def sync_rng(self) -> None:
        """Every process takes rank 0's torch generator states (CPU, and the GPU's on CUDA): rank 0
        alone evaluates, and its draws there must not set it apart."""
        if self.world == 1:
            return
        import torch.distributed as dist

        box = [torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None]
        dist.broadcast_object_list(box, src=0)
        torch.set_rng_state(box[0])
        if box[1] is not None:
            torch.cuda.set_rng_state(box[1], self.device)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Every process starts from rank 0's weights."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def join(device: torch.device, timeout_minutes: float = 120.0) -> Group:
    """The process group ``torchrun`` set up in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``), joined with NCCL on CUDA and gloo on the
    CPU; a single process (no such environment) is ``Group()`` on ``device``. On CUDA each
    process takes GPU ``LOCAL_RANK``. The timeout covers rank 0's evaluations, which the others
    wait for at the next all-reduce."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(device=device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Group(rank=rank, world=world, device=device)


def leave(group: Group) -> None:
    """Tear the process group down (a no-op for one process)."""
    if group.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
