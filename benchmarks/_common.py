"""Shared by the benchmark scripts: the flags every one takes and the header every timing states."""

from __future__ import annotations

import argparse
import platform

import torch

from cdp.runtime import tune_allocator


def parse(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, str]:
    """Add ``--quick`` and ``--default-malloc``, parse, tune the allocator as the CLI does
    (unless ``--default-malloc``), and return the arguments with a one-line machine header."""
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (the CLI and sweep workers tune it: cdp.runtime)")
    args = ap.parse_args()
    if args.default_malloc:
        malloc = "default malloc"
    else:
        malloc = "malloc tuned (cdp.runtime)" if tune_allocator() else "malloc not tunable here"
    machine = platform.processor() or platform.machine()
    return args, f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, {malloc}"
