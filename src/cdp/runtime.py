"""Process-level settings for the processes this project starts (the CLI, sweep workers,
benchmarks). Nothing here runs on ``import cdp``: a library must not change its host's malloc.

glibc hands every allocation above a threshold (128 KB at start, adapting up to 32 MB) to
``mmap`` and gives freed heap memory back to the OS past a trim threshold. A CPU training or
sampling step allocates many short-lived tensors of 0.25-2 MB (a 1000 x 256 activation is
1 MB), so without tuning each one can cost fresh page faults (the kernel zeroes every page).
Measured here (benchmarks/action_selection.py --quick with and without --default-malloc): EDP
action selection for 10 states x 100 candidates 97 -> 57 ms on one thread, 38 -> 33 ms on two;
the every-t contraction step's 1.5 MB tangent batches gain too (docs/performance.md, "Speed"). The maths
is untouched; the price is that the process keeps its peak heap instead of returning it.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve tensors below ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap for reuse. Returns whether the settings took (glibc
    on Linux); elsewhere it does nothing and returns False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one: a container
    or ``taskset`` may allow fewer than the machine has), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device_name(name: str) -> None:
    """A ``ValueError`` unless ``name`` is ``auto`` or a cpu / cuda[:N] / mps device (whether this
    machine has it is :func:`resolve_device`'s business, at run time)."""
    import torch

    try:
        ok = name == "auto" or torch.device(name).type in DEVICE_TYPES
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")


def resolve_device(name: str) -> "torch.device":
    """The torch device a run config names: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or
    ``"auto"`` (the first CUDA GPU when there is one, else the CPU). A device this machine lacks
    is a ``ValueError`` naming it, before anything is built."""
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r} is not available here (torch {torch.__version__}, "
                         f"{torch.cuda.device_count()} CUDA devices); use cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is not available here; use cpu or auto")
    return dev
