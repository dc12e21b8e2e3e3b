"""Command line: ``cdp demo``."""

from __future__ import annotations

import argparse
import sys


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdp", description="Contractive Diffusion Policies")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the contraction regulariser on scarce two-mode data (about a minute)")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--steps", type=_positive_int, default=3000, help="training steps per model (default 3000)")
    d.add_argument("--n-data", type=_positive_int, default=200, help="dataset size (default 200)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, steps=args.steps, n_data=args.n_data, seed=args.seed, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
