"""Shared by the benchmark scripts: the flags every one takes and the header every timing states."""

from __future__ import annotations

import argparse
import platform
import time

import torch

from cdp.runtime import resolve_device, tune_allocator


def parse(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, str]:
    """Add ``--quick``, ``--default-malloc`` and ``--device``, parse, tune the allocator as the CLI
    does (unless ``--default-malloc``), and return the arguments (``args.device`` resolved to a
    ``torch.device``) with a one-line machine header."""
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (the CLI and sweep workers tune it: cdp.runtime)")
    args = ap.parse_args()
    if args.default_malloc:
        malloc = "default malloc"
    else:
        malloc = "malloc tuned (cdp.runtime)" if tune_allocator() else "malloc not tunable here"
    machine = platform.processor() or platform.machine()
    args.device = resolve_device(args.device)
    if args.device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(args.device)} (host {machine})"
    return args, f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, {malloc}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (GPU kernels run
    asynchronously; on the CPU this does nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_call(fn, calls: int, device: torch.device) -> float:
    """Wall-clock ms per call of ``fn`` over ``calls`` back-to-back calls, the device's queued
    work included at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - t0) / calls


class Table:
    """A markdown table printed row by row as it is measured, and kept for ``--markdown``."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        print("\n".join(self.lines), flush=True)

    def row(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)

    def write(self, path: str | None) -> None:
        if path:
            with open(path, "w") as fh:
                fh.write("\n".join(self.lines) + "\n")
