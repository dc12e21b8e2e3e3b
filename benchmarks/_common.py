"""Shared by the benchmark scripts: the allocator setting every timing states."""

from __future__ import annotations

import argparse

from cdp.runtime import tune_allocator


def add_malloc_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (the CLI and sweep workers tune it: cdp.runtime)")


def setup_malloc(args: argparse.Namespace) -> str:
    """Tune the allocator as the CLI does unless ``--default-malloc``; a phrase for the header."""
    if args.default_malloc:
        return "default malloc"
    return "malloc tuned (cdp.runtime)" if tune_allocator() else "malloc not tunable here"
