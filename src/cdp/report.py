"""Tables and plots from per-run records: ``cdp report RESULTS_DIR``.

A record is the small JSON file each finished run leaves under ``results/`` (``config``,
``summary``, ``eval`` rows; :func:`cdp.rl.trainer.record`, :func:`cdp.il.trainer.record`). Runs
are grouped by dataset (offline RL) or task + demonstration file (imitation), then by method
(the run name without fraction and seed, e.g. ``edp``, ``cdp``, ``cdp-g1``, ``dp-unet``) and data
fraction; each cell is the mean ± standard error over seeds, with the seed count, and the best
mean of each column in bold.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write


@dataclass
class Run:
    group: str  # dataset id or task/file
    method: str
    fraction: float
    seed: int
    kind: str  # "rl" or "il"
    summary: dict
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, score) per evaluation


def _method(name: str) -> str:
    """Run name without its fraction and seed parts: ``cdp-f0.1-g1-s2`` -> ``cdp-g1``."""
    return re.sub(r"-s\d+$", "", re.sub(r"-f[0-9.e-]+?(?=-|$)", "", name, count=1))


def load_runs(root: str | Path) -> list[Run]:
    """Every record (``*.json`` with ``config`` and ``summary``) under ``root``."""
    from .il.trainer import ILTrainConfig
    from .rl.trainer import TrainConfig

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    runs = []
    for p in sorted(root.rglob("*.json")):
        rec = json.loads(p.read_text())
        if not isinstance(rec, dict) or "config" not in rec or "summary" not in rec:
            continue
        cfg, summary = rec["config"], rec["summary"]
        if "policy" in cfg:  # imitation: success rates in percent
            c = ILTrainConfig(**cfg)
            group, kind, key, scale = f"{c.task}/{Path(c.dataset).stem}", "il", "success_rate", 100.0
        else:
            c = TrainConfig(**cfg)
            group, kind, scale = c.dataset, "rl", 1.0
            key = summary.get("metric", "d4rl_score_mean")
        if kind == "il":
            summary = {k: v * scale if k in ("final", "best") or k.startswith("mean_last") else v for k, v in summary.items()}
        curve = [(int(r["step"]), float(r[key]) * scale) for r in rec.get("eval", []) if r.get(key) not in (None, "")]
        if curve and "mean_last3" not in summary:  # one evaluation is noisy: also the mean of the last three
            summary = {**summary, "mean_last3": float(np.mean([v for _, v in curve[-3:]]))}
        runs.append(Run(group, _method(c.run_name()), float(c.fraction), int(c.seed), kind, summary, curve))
    if not runs:
        raise FileNotFoundError(f"no run records under {root}")
    return runs


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0)


def table(runs: list[Run], metric: str = "final") -> str:
    """Markdown: rows = methods, columns = data fractions; ``mean ± s.e. (n)``, best mean bold."""
    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    cells: dict[tuple[str, float], tuple[float, float, int]] = {}
    for m in methods:
        for f in fracs:
            vals = [r.summary[metric] for r in runs if r.method == m and r.fraction == f and metric in r.summary]
            if vals:
                cells[m, f] = (*mean_se(vals), len(vals))
    best = {f: max((cells[m, f][0] for m in methods if (m, f) in cells), default=None) for f in fracs}
    head = "| method | " + " | ".join(f"{f:.0%} data" for f in fracs) + " |"
    lines = [head, "|---|" + "---:|" * len(fracs)]
    for m in methods:
        row = []
        for f in fracs:
            if (m, f) not in cells:
                row.append("")
                continue
            mu, se, n = cells[m, f]
            txt = f"{mu:.1f} ± {se:.1f} ({n})"
            row.append(f"**{txt}**" if best[f] is not None and mu == best[f] and len(methods) > 1 else txt)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot_curves(runs: list[Run], title: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = sorted({r.fraction for r in runs}, reverse=True)
    fig, axes = plt.subplots(1, len(fracs), figsize=(5 * len(fracs), 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], fracs):
        for m in sorted({r.method for r in runs}):
            curves = [dict(r.curve) for r in runs if r.method == m and r.fraction == f and r.curve]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            vals = np.array([[c[s] for s in steps] for c in curves])
            mu = vals.mean(0)
            se = vals.std(0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mu)
            ax.plot(steps, mu, marker="o", ms=3, label=f"{m} ({len(curves)})")
            ax.fill_between(steps, mu - se, mu + se, alpha=0.2)
        ax.set_title(f"{title}, {f:.0%} data", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """``report.md`` (tables of final / best / last-three scores per group) and one learning-curve
    PNG per group, in ``out`` (default: ``root``). Returns the markdown file."""
    runs = load_runs(root)
    out = Path(out) if out is not None else Path(root)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.group].append(r)
    md = [f"# Results under {root}", "", "Mean ± standard error over seeds (seed count in brackets); best mean per "
          "column in bold.", ""]
    for g, rs in sorted(groups.items()):
        kind = rs[0].kind
        unit = "success rate (%)" if kind == "il" else (
            "D4RL-normalised score" if rs[0].summary.get("metric") == "d4rl_score_mean" else "return")
        png = re.sub(r"[^A-Za-z0-9_.-]+", "_", g) + ".png"
        atomic_write(out / png, _plot_curves(rs, g, unit))
        md += [f"## {g}", "", f"{unit}; steps: {sorted({r.summary.get('step') for r in rs})}", ""]
        metrics = [("final", "at the last evaluation"), ("mean_last3", "mean of the last three evaluations"),
                   ("best", "best evaluation (max over checkpoints)")]
        for key, what in metrics:
            md += [f"**{key}** — {what}", "", table(rs, key), ""]
        secs = [(r.method, r.summary["train_seconds_per_1k_steps"]) for r in rs if "train_seconds_per_1k_steps" in r.summary]
        if secs:
            per = defaultdict(list)
            for m, s in secs:
                per[m].append(s)
            md += ["Training time (s per 1k steps, evaluations excluded): "
                   + ", ".join(f"{m} {np.mean(v):.0f}" for m, v in sorted(per.items())), ""]
        md += [f"![{g}]({png})", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(md).encode())
    return path
