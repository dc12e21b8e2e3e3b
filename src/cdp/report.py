"""Tables and plots from per-run records: ``cdp report RESULTS_DIR``.

A record is the small JSON file each finished run leaves under ``results/`` (``config``,
``summary``, ``eval`` rows; :func:`cdp.rl.trainer.record`, :func:`cdp.il.trainer.record`). Runs
are grouped by dataset (offline RL) or task + demonstration file (imitation), then by method
(the run name without fraction and seed, e.g. ``edp``, ``cdp``, ``cdp-g1``, ``dp-unet``) and data
fraction; each cell is the mean ± standard error over seeds, with the seed count, and the best
mean of each column in bold.

Tables quoted in another markdown file (the README) stay the records' own: a block
``<!-- report: RESULTS_DIR overview GROUP -->`` ... ``<!-- /report -->`` (or ``summary``, or
``versus GROUP``) is rewritten from the records by ``cdp report --sync FILE`` (:func:`sync_blocks`).
"""

from __future__ import annotations

import io
import json
import math
import re
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write, fill_saved, read_json


@dataclass
class Run:
    group: str  # dataset id or task/file
    method: str
    fraction: float
    seed: int
    kind: str  # "rl" or "il"
    summary: dict
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, score) per evaluation
    gamma: float = 0.0  # contraction weight (0 for a base method)
    margin: float | None = None
    term: list[dict] = field(default_factory=list)  # the term's stats between evaluations (record "term")
    losses: list[dict] = field(default_factory=list)  # the logged losses between evaluations (record "losses")


def _method(name: str) -> str:
    """Run name without its fraction and seed parts: ``cdp-f0.1-g1-s2`` -> ``cdp-g1``."""
    return re.sub(r"-s\d+$", "", re.sub(r"-f[0-9.e-]+?(?=-|$)", "", name, count=1))


def load_runs(root: str | Path) -> list[Run]:
    """Every record (``*.json`` with ``config`` and ``summary``) under ``root``. Two records of
    one run (group, method, data share and seed: a folder holding several studies' results that
    name their runs alike) are a ``ValueError`` naming both, not a silent mix."""
    from .il.trainer import ILTrainConfig
    from .rl.trainer import TrainConfig

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder at {root}")
    runs, seen = [], {}
    for p in sorted(root.rglob("*.json")):
        rec = read_json(p, "run record")
        if not isinstance(rec, dict) or "config" not in rec or "summary" not in rec:
            continue
        cfg, summary = rec["config"], rec["summary"]
        if not isinstance(cfg, dict) or not cfg or not isinstance(summary, dict):
            raise ValueError(f"{p}: a record with an empty or malformed config / summary; restore or delete it")
        try:
            c = ILTrainConfig(**fill_saved(ILTrainConfig, cfg)) if "policy" in cfg else \
                TrainConfig(**fill_saved(TrainConfig, cfg))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: its config is not a run config ({e})") from None
        if "policy" in cfg:  # imitation: success rates in percent
            group, kind, key, scale = f"{c.task}/{Path(c.dataset).stem}", "il", "success_rate", 100.0
        else:
            group, kind, scale = c.dataset, "rl", 1.0
            key = summary.get("metric", "d4rl_score_mean")
        if kind == "il":
            summary = {k: v * scale if k in ("final", "best") or k.startswith("mean_last") else v for k, v in summary.items()}
        curve = [(int(r["step"]), float(r[key]) * scale) for r in rec.get("eval", []) if r.get(key) not in (None, "")]
        if curve and "mean_last3" not in summary:  # one evaluation is noisy: also the mean of the last three
            summary = {**summary, "mean_last3": float(np.mean([v for _, v in curve[-3:]]))}
        cdp = c.policy.startswith("cdp") if kind == "il" else c.algo == "cdp"
        which = (group, _method(c.run_name()), float(c.fraction), int(c.seed))
        if which in seen:
            raise ValueError(f"{seen[which]} and {p} record the same run ({' / '.join(map(str, which))}): report "
                             "their folders apart")
        seen[which] = p
        runs.append(Run(*which, kind, summary, curve,
                        float(c.gamma) if cdp else 0.0, c.margin if cdp else None, rec.get("term") or [],
                        rec.get("losses") or []))
    if not runs:
        raise FileNotFoundError(f"no run records under {root}")
    return runs


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """``{group: its runs}`` (dataset for offline RL, task/file for imitation)."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.group].append(r)
    return dict(groups)


def values(runs: list[Run], method: str, fraction: float, metric: str) -> list[float]:
    """``metric`` of every run (one per seed) of ``method`` at ``fraction`` that records it."""
    return [r.summary[metric] for r in runs if r.method == method and r.fraction == fraction and metric in r.summary]


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), (float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0)


def fmt_mean_se(values: list[float], digits: int = 1) -> str:
    """``mean ± s.e.`` over ``values``; the mean alone for one value (its standard error is undefined)."""
    mu, se = mean_se(values)
    return f"{mu:.{digits}f}" if len(values) == 1 else f"{mu:.{digits}f} ± {se:.{digits}f}"


def table(runs: list[Run], metric: str = "final", digits: int = 1, bold: bool = True) -> str:
    """Markdown: rows = methods, columns = data fractions; ``mean ± s.e. (n)`` (the mean alone for
    one seed), best (largest) mean bold."""
    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    cells: dict[tuple[str, float], tuple[float, str]] = {}
    for m in methods:
        for f in fracs:
            vals = values(runs, m, f, metric)
            if vals:
                cells[m, f] = (mean_se(vals)[0], f"{fmt_mean_se(vals, digits)} ({len(vals)})")
    best = {f: max((cells[m, f][0] for m in methods if (m, f) in cells), default=None) for f in fracs}
    head = "| method | " + " | ".join(f"{f:.0%} data" for f in fracs) + " |"
    lines = [head, "|---|" + "---:|" * len(fracs)]
    for m in methods:
        row = []
        for f in fracs:
            if (m, f) not in cells:
                row.append("")
                continue
            mu, txt = cells[m, f]
            row.append(f"**{txt}**" if bold and best[f] is not None and mu == best[f] and len(methods) > 1 else txt)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


#: overview columns: (summary key, header, digits); a column shows when any run records it
OVERVIEW = (("final", "final", 1), ("mean_last3", "mean of last 3", 1), ("best", "best", 1),
            ("modes_final", "goal orders", 1), ("stages_final", "stages reached", 2),
            ("action_spread_final", "spread", 2))


def overview(runs: list[Run]) -> str:
    """Markdown: one row per (data fraction, method), every recorded metric as ``mean ± s.e.``
    over seeds, the seed count in its own column — the one table to quote for a group."""
    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    cols = [c for c in OVERVIEW if any(c[0] in r.summary for r in runs)]
    lines = ["| data | method | n | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for f in fracs:
        for m in methods:
            seeds = [r for r in runs if r.method == m and r.fraction == f]
            if not seeds:
                continue
            cells = []
            for key, _, digits in cols:
                vals = values(runs, m, f, key)
                cells.append(fmt_mean_se(vals, digits) if vals else "")
            lines.append(f"| {f:.0%} | {m} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(runs: list[Run], metric: str = "mean_last3", digits: int = 1) -> str:
    """Markdown: ``metric`` seed by seed, one column per seed (empty where a run has no record)
    and the mean ± s.e. over the seeds; after each contraction method whose base ran at that
    data fraction, a row ``method − base`` with the seed-paired differences on the seeds both ran
    and their mean ± s.e. (paired, so it can differ from the versus table's difference of means)."""
    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    seeds = sorted({r.seed for r in runs if metric in r.summary})
    lines = ["| data | method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± s.e. |",
             "|---|---|" + "---:|" * (len(seeds) + 1)]

    def row(f: float, label: str, by: dict[int, float], sign: str) -> str:
        cells = [f"{by[s]:{sign}.{digits}f}" if s in by else "" for s in seeds]
        mu, se = mean_se(list(by.values()))
        mean = f"{mu:{sign}.{digits}f}" + (f" ± {se:.{digits}f}" if len(by) > 1 else "")
        return f"| {f:.0%} | {label} | " + " | ".join(cells) + f" | {mean} |"

    for f in fracs:
        for m in methods:
            mine = by_seed(runs, m, f, metric)
            if not mine:
                continue
            lines.append(row(f, m, mine, ""))
            b = base_of(m)
            theirs = by_seed(runs, b, f, metric) if b else {}
            paired = {s: mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys())}
            if paired:
                lines.append(row(f, f"{m} − {b}", paired, "+"))
    return "\n".join(lines)


def base_of(method: str) -> str | None:
    """The method a contraction variant adds its term to: ``cdp`` -> ``edp``, ``cdp-unet`` ->
    ``dp-unet``, ``cdp-iql-g1-mNone`` -> ``edp-iql``, ``cdp-g1-official_frobenius`` -> ``edp`` (the
    contraction's own gamma / window / margin / form / estimator parts dropped: ``cdp-unet-cnn-auto-x256``
    -> ``dp-unet-cnn``); None for a base method."""
    if not method.startswith("cdp"):
        return None
    method = re.sub(r"-(?:(?:g|tmax|m)(?:None|[0-9.e+-]+?)|official_frobenius|literal_frobenius|frobenius|literal"
                    r"|native|auto|autograd|fd|x[0-9]+)(?=-|$)", "", method)
    if method == "cdp" or method.startswith("cdp-") and method.split("-")[1] not in ("unet", "dit", "mlp"):
        return "edp" + method[3:]
    if method.startswith("cdp-"):
        return "dp-" + method[4:]
    return None


def difference_cell(x: list[float], y: list[float], ahead: tuple[int, int]) -> str:
    """``mean(x) - mean(y) ± se (z se; ahead k/n; n nx/ny)``: the difference of the seeds' means,
    its standard error ``sqrt(se_x^2 + se_y^2)`` (the seeds of the two methods taken as independent
    samples), the difference in those standard errors, and ``ahead`` (:func:`seeds_ahead`). The
    standard error needs two seeds on each side; ahead shows where a seed ran both."""
    (mx, sx), (my, sy) = mean_se(x), mean_se(y)
    diff, sd = mx - my, math.hypot(sx, sy)
    parts = [f"ahead {ahead[0]}/{ahead[1]}"] if ahead[1] else []
    if len(x) > 1 and len(y) > 1 and sd > 0:
        head = f"{diff:+.1f} ± {sd:.1f}"
        parts.insert(0, f"{abs(diff) / sd:.1f} se")
    else:
        head = f"{diff:+.1f}"
    return f"{head} (" + "; ".join(parts + [f"n {len(x)}/{len(y)}"]) + ")"


def cdp_vs_base(runs: list[Run], metric: str = "mean_last3") -> str:
    """Markdown: for every contraction method with its base in ``runs``, the difference of means
    (CDP - base) per data fraction with its standard error and seed-paired wins
    (:func:`difference_cell`), the paper's full-data gain where it has one, where the hinge acted
    (:func:`hinge_active`, per data fraction, where the runs logged it), and the training-time
    ratio (evaluations excluded; :func:`time_ratio`) beside the paper's GPU ratio."""
    from . import paper

    methods = sorted({r.method for r in runs})
    pairs = [(m, base_of(m)) for m in methods if base_of(m) in methods]
    if not pairs:
        return ""
    fracs = sorted({r.fraction for r in runs}, reverse=True)
    key, kind = paper.task_key(runs[0].group), runs[0].kind
    gains = {m: f"{paper.GAIN_OVER_EDP[key]:+.1f}" for m, b in pairs if key and b.startswith("edp") and m == "cdp"}
    paper_col = " paper (100%) |" if gains else ""  # only where the paper reports this task's gain
    active = {m: [hinge_active(runs, m, f) for f in fracs] for m, _ in pairs}
    logged = any(a is not None for v in active.values() for a in v)
    active_col = f" hinge active ({' / '.join(f'{f:.0%}' for f in fracs)}) |" if logged else ""
    lines = ["| CDP - base | " + " | ".join(f"{f:.0%} data" for f in fracs) + f" |{paper_col}{active_col} time ratio | paper ratio |",
             "|---|" + "---:|" * (len(fracs) + 2 + bool(gains) + logged)]
    for m, b in pairs:
        row = []
        for f in fracs:
            x, y = values(runs, m, f, metric), values(runs, b, f, metric)
            if not x or not y:
                row.append("")
                continue
            row.append(difference_cell(x, y, seeds_ahead(runs, m, b, f, metric)))
        r_mb = time_ratio(runs, m, b)
        ratio = f"{r_mb:.2f}x" if r_mb is not None else ""
        gain = f" {gains.get(m, '')} |" if gains else ""
        acts = " / ".join("–" if a is None else f"{100 * a:.2f}%" for a in active[m])  # –: not logged
        act = f" {acts if any(a is not None for a in active[m]) else ''} |" if logged else ""
        lines.append(f"| {m} vs {b} | " + " | ".join(row) + f" |{gain}{act} {ratio} | {paper.cost_ratio(kind):.2f}x |")
    return "\n".join(lines)


def hinge_active(runs: list[Run], method: str, fraction: float) -> float | None:
    """The share of the term's rows above the hinge's floor (the rows its gradient reaches), for
    ``method`` at ``fraction``: each run's mean over its logged stretches (record ``term``), then
    the mean over its seeds; None where no run logged it. Near 0, the hinge is flat on almost
    every row and the CDP run trains as its base does."""
    per_run = [float(np.mean([t["active"] for t in r.term if "active" in t])) for r in runs
               if r.method == method and r.fraction == fraction and any("active" in t for t in r.term)]
    return float(np.mean(per_run)) if per_run else None


def machine(run: Run) -> str | None:
    """Where the run trained: the ``where`` its record's legs share (device, CPU or GPU model,
    host); None for a record without legs, ``""`` for one whose legs differ."""
    places = {leg.get("where") for leg in run.summary.get("legs") or []}
    return None if not places else places.pop() if len(places) == 1 else ""


def load_range(runs: list[Run]) -> str | None:
    """``"1.9-2.4 on 2 cores"``: the range over the runs of each run's machine load while it
    trained (the legs' ``load``, weighted by their steps), for the records that keep it; None
    where none does."""
    loads, cores = [], set()
    for r in runs:
        legs = [leg for leg in r.summary.get("legs") or [] if leg.get("load") is not None and leg["to"] > leg["from"]]
        if legs:
            loads.append(sum(leg["load"] * (leg["to"] - leg["from"]) for leg in legs)
                         / sum(leg["to"] - leg["from"] for leg in legs))
            cores |= {leg.get("cores") for leg in legs}
    if not loads:
        return None
    lo, hi = f"{min(loads):.1f}", f"{max(loads):.1f}"
    span = lo if lo == hi else f"{lo}-{hi}"
    return f"{span} on {cores.pop()} cores" if len(cores) == 1 and None not in cores else span


def time_ratio(runs: list[Run], method: str, base: str) -> float | None:
    """Mean training seconds per 1k steps of ``method`` over ``base``'s, from the runs of both
    that trained on one machine (:func:`machine`; the one with the most such runs), since hosts
    differ several times in speed; None where no machine ran both. Records without legs count as
    one machine, as before legs were recorded."""
    secs: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    for r in runs:
        where = machine(r)
        if r.method in (method, base) and "train_seconds_per_1k_steps" in r.summary and where != "":
            secs[(r.method, where)].append(r.summary["train_seconds_per_1k_steps"])
    shared = [w for (m, w) in secs if m == method and (base, w) in secs]
    if not shared:
        return None
    w = max(shared, key=lambda w: len(secs[(method, w)]) + len(secs[(base, w)]))
    return float(np.mean(secs[(method, w)]) / np.mean(secs[(base, w)]))


def by_seed(runs: list[Run], method: str, fraction: float, metric: str) -> dict[int, float]:
    """``{seed: metric}`` for the runs of ``method`` at ``fraction`` that record it."""
    return {r.seed: r.summary[metric] for r in runs if r.method == method and r.fraction == fraction and metric in r.summary}


def seeds_ahead(runs: list[Run], method: str, base: str, fraction: float, metric: str) -> tuple[int, int]:
    """``(k, n)``: of the n seeds both ``method`` and ``base`` ran at ``fraction``, on k the
    method's ``metric`` was the larger (seed-paired: same data subset and initialisation seed)."""
    mine, theirs = by_seed(runs, method, fraction, metric), by_seed(runs, base, fraction, metric)
    both = mine.keys() & theirs.keys()
    return sum(mine[s] > theirs[s] for s in both), len(both)


def contraction_pairs(groups: dict[str, list[Run]]) -> Iterator[tuple[str, list[Run], str, str]]:
    """``(group, its runs, CDP method, its base)`` for every contraction method whose base ran
    in the same group, groups and methods in sorted order."""
    for g, rs in sorted(groups.items()):
        methods = sorted({r.method for r in rs})
        for m in methods:
            if base_of(m) in methods:
                yield g, rs, m, base_of(m)  # type: ignore[misc]


def across_groups(groups: dict[str, list[Run]], metric: str = "mean_last3") -> str:
    """Markdown: every contraction method minus its base, in every group, per data fraction — the
    difference of the seeds' means of ``metric`` with its standard error and on how many paired
    seeds CDP was ahead (:func:`difference_cell`)."""
    fracs = sorted({r.fraction for rs in groups.values() for r in rs}, reverse=True)
    lines = ["| group | CDP − base | " + " | ".join(f"{f:.0%} data" for f in fracs) + " |",
             "|---|---|" + "---:|" * len(fracs)]
    for g, rs, m, b in contraction_pairs(groups):
        cells = []
        for f in fracs:
            x, y = values(rs, m, f, metric), values(rs, b, f, metric)
            cells.append(difference_cell(x, y, seeds_ahead(rs, m, b, f, metric)) if x and y else "")
        lines.append(f"| {g} | {m} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def paired_differences(groups: dict[str, list[Run]], metric: str = "mean_last3") -> list[tuple[str, float, list[float]]]:
    """``(label, fraction, [CDP - base per seed])`` for every contraction method with its base in
    a group, over the seeds both ran at that fraction (same data subset, same initialisation seed);
    the label is ``"<group>: <method> − <base>"``."""
    rows = []
    for g, rs, m, b in contraction_pairs(groups):
        for f in sorted({r.fraction for r in rs}, reverse=True):
            mine, base = by_seed(rs, m, f, metric), by_seed(rs, b, f, metric)
            diffs = [mine[k] - base[k] for k in sorted(mine.keys() & base.keys())]
            if diffs:
                rows.append((f"{g}: {m} − {b}", f, diffs))
    return rows


def _summary_plot(groups: dict[str, list[Run]], metric: str = "mean_last3") -> bytes | None:
    """Forest plot of :func:`paired_differences`: one row per comparison, one marker per data
    fraction (mean ± s.e. of the seed-paired differences), each seed's difference as a dot."""
    rows = paired_differences(groups, metric)
    if not rows:
        return None
    plt = _pyplot()
    labels = list(dict.fromkeys(lab for lab, _, _ in rows))
    fracs = sorted({f for _, f, _ in rows}, reverse=True)
    # long method names: each label on two lines (CDP, then its base), the figure widened to fit them
    width = max(len(line) for lab in labels for line in lab.split(" − "))
    fig, ax = plt.subplots(figsize=(max(7.5, 5.5 + 0.055 * width), 0.9 + 0.7 * len(labels)))
    for i, f in enumerate(fracs):
        off = (i - (len(fracs) - 1) / 2) * 0.25
        for lab, ff, diffs in rows:
            if ff != f:
                continue
            y = labels.index(lab) + off
            mu, se = mean_se(diffs)
            ax.scatter(diffs, [y] * len(diffs), s=9, color=f"C{i}", alpha=0.45, linewidths=0)
            ax.errorbar(mu, y, xerr=se, fmt="o", ms=5, capsize=3, color=f"C{i}",
                        label=f"{f:.0%} data" if lab == next(lb for lb, f2, _ in rows if f2 == f) else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), [lab.replace(" − ", "\n− ") for lab in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"CDP − base, {metric} (seed-paired; dots: seeds, marker: mean ± s.e.)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def compute_hours(runs: list[Run]) -> float:
    """Wall-clock hours the runs took, evaluations included: each run's ``step`` × its
    ``seconds_per_1k_steps`` (over every process that trained it; in records without ``legs`` a
    resumed run's rate is its last leg's, applied to all its steps)."""
    return sum(r.summary["step"] * r.summary["seconds_per_1k_steps"] / 1000 for r in runs
               if "seconds_per_1k_steps" in r.summary and "step" in r.summary) / 3600


def _bars(runs: list[Run], title: str, ylabel: str, metric: str = "mean_last3") -> bytes:
    """Grouped bars: one group per method, one bar per data fraction (mean ± s.e. over seeds)."""
    plt = _pyplot()

    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(methods) + 1), 3.4))
    w = 0.8 / len(fracs)
    for i, f in enumerate(fracs):
        stats = [mean_se(v) if (v := values(runs, m, f, metric)) else (np.nan, 0.0) for m in methods]
        x = np.arange(len(methods)) + (i - (len(fracs) - 1) / 2) * w
        ax.bar(x, [s[0] for s in stats], w, yerr=[s[1] for s in stats], capsize=3, label=f"{f:.0%} data")
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({metric})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _score_and_modes_panels(runs: list[Run], metric: str, ylabel: str):
    """A figure with the score panel and, for imitation runs that record goal orders, a second
    one: ``(fig, axes, [(ax, summary key, y label), ...])``."""
    plt = _pyplot()
    modes = any("modes_final" in r.summary for r in runs)
    fig, axes = plt.subplots(1, 2 if modes else 1, figsize=(10 if modes else 5, 3.4), squeeze=False)
    return fig, axes, list(zip(axes[0], (metric, "modes_final"), (ylabel, "goal orders reproduced")))


def _finish_panels(fig, axes, title: str) -> bytes:
    axes[0][0].set_title(title, fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _per_seed(runs: list[Run], key: str, keep: Callable[[Run], bool]) -> list[float]:
    """``summary[key]`` of the runs ``keep`` accepts, one value per seed."""
    return list({r.seed: r.summary[key] for r in runs if key in r.summary and keep(r)}.values())


def _sensitivity(runs: list[Run], title: str, ylabel: str, metric: str = "mean_last3") -> bytes | None:
    """Score (and, for imitation, the number of demonstrated goal orders reproduced) against gamma,
    one line per margin and data fraction; the base method is gamma 0. None with fewer than
    three gamma values."""
    gammas = sorted({r.gamma for r in runs})
    if len(gammas) < 3:
        return None
    fig, axes, panels = _score_and_modes_panels(runs, metric, ylabel)
    lines = sorted({(r.fraction, r.margin) for r in runs if r.gamma > 0}, key=lambda k: (-k[0], str(k[1])))
    # a margin tried at a single gamma is the margin figure's business, not a line here
    lines = [(f, mg) for f, mg in lines if len({r.gamma for r in runs if r.gamma > 0 and r.margin == mg and r.fraction == f}) > 1]
    for ax, key, lab in panels:
        for f, mg in lines:
            pts = []
            for g in gammas:
                # gamma 0 (no term, so no margin either) is one point per seed, shared by every line
                v = _per_seed(runs, key, lambda r: r.fraction == f and (r.gamma == g == 0 or r.gamma == g and r.margin == mg))
                if v:
                    pts.append((g, *mean_se(v)))
            if pts:
                xs, mu, se = (np.array(c) for c in zip(*pts))
                ax.errorbar(np.maximum(xs, min(g for g in gammas if g > 0) / 10), mu, yerr=se, marker="o", ms=3,
                            capsize=3, label=f"{f:.0%} data, margin {mg}")
        ax.set_xscale("log")
        ax.set_xlabel("gamma (base method drawn at gamma_min / 10)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, f"{title}: gamma sensitivity ({metric})")


def _margin_sensitivity(runs: list[Run], title: str, ylabel: str, metric: str = "mean_last3") -> bytes | None:
    """Score (and goal orders reproduced, for imitation) against the hinge's margin at the gamma
    tried with the most margins (at least three), one line per data fraction, "none" (no hinge)
    last; the base method (gamma 0) as a dashed band. None when no gamma has three margins."""
    by_gamma: dict[float, set] = defaultdict(set)
    for r in runs:
        if r.gamma > 0:
            by_gamma[r.gamma].add(r.margin)
    if not by_gamma:
        return None
    gamma = max(by_gamma, key=lambda g: (len(by_gamma[g]), -abs(math.log10(g) + 1)))  # ties: nearest 0.1
    if len(by_gamma[gamma]) < 3:
        return None
    margins = sorted(by_gamma[gamma], key=lambda m: (m is None, m or 0.0))
    fig, axes, panels = _score_and_modes_panels(runs, metric, ylabel)
    for ax, key, lab in panels:
        for i, f in enumerate(sorted({r.fraction for r in runs}, reverse=True)):
            pts = [(x, *mean_se(v)) for x, m in enumerate(margins)
                   if (v := _per_seed(runs, key, lambda r: r.fraction == f and r.gamma == gamma and r.margin == m))]
            if pts:
                xs, mu, se = (np.array(c) for c in zip(*pts))
                ax.errorbar(xs, mu, yerr=se, marker="o", ms=3, capsize=3, color=f"C{i}", label=f"{f:.0%} data, gamma {gamma:g}")
            base = _per_seed(runs, key, lambda r: r.fraction == f and r.gamma == 0)
            if base:
                mu0, se0 = mean_se(base)
                ax.axhline(mu0, color=f"C{i}", ls="--", lw=1, label=f"{f:.0%} data, base (gamma 0, n {len(base)})")
                ax.axhspan(mu0 - se0, mu0 + se0, color=f"C{i}", alpha=0.1)
        ax.set_xticks(range(len(margins)), ["none" if m is None else f"{m:g}" for m in margins])
        ax.set_xlabel("margin (term = gamma max(lambda, -margin); none: no floor)", fontsize=8)
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    return _finish_panels(fig, axes, f"{title}: margin sensitivity ({metric})")


def _plot_curves(runs: list[Run], title: str, ylabel: str) -> bytes:
    """One panel per data fraction, mean ± s.e. over seeds per method; a method keeps its colour
    in every panel, and each panel's legend gives its own seed counts."""
    plt = _pyplot()

    fracs = sorted({r.fraction for r in runs}, reverse=True)
    methods = sorted({r.method for r in runs})
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(fracs), figsize=(5 * len(fracs), 3.6), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], fracs):
        for m in methods:
            curves = [dict(r.curve) for r in runs if r.method == m and r.fraction == f and r.curve]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            vals = np.array([[c[s] for s in steps] for c in curves])
            mu = vals.mean(0)
            se = vals.std(0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mu)
            ax.plot(steps, mu, marker="o", ms=3, color=colour[m], label=f"{m} ({len(curves)})")
            ax.fill_between(steps, mu - se, mu + se, color=colour[m], alpha=0.2)
        ax.set_title(f"{title}, {f:.0%} data", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="method (seeds)", title_fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    return _png(fig)


def _plot_trace(runs: list[Run], trace: str, key: str, scale: float, ylabel: str, title: str,
                log: bool | str = False) -> bytes | None:
    """``key`` of each run's between-evaluation ``trace`` (``"term"`` or ``"losses"``) over
    training, times ``scale``, one line per run that has it (colour: method and data share; line
    style: seed); None when none has."""
    points = {id(r): [(p["step"], scale * p[key]) for p in getattr(r, trace) if key in p] for r in runs}
    traced = [r for r in runs if points[id(r)]]
    if not traced:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    keys = sorted({(r.method, r.fraction) for r in traced})
    colour = {k: f"C{i % 10}" for i, k in enumerate(keys)}
    for r in sorted(traced, key=lambda r: (r.method, -r.fraction, r.seed)):
        steps, values = zip(*points[id(r)])
        ax.plot(steps, values, marker="o", ms=3, color=colour[(r.method, r.fraction)], ls=("-", "--", ":", "-.")[r.seed % 4],
                label=f"{r.method}, {r.fraction:.0%} data, seed {r.seed}")
    if log:  # "symlog": values of either sign over many orders of magnitude (a Q value)
        ax.set_yscale(log if isinstance(log, str) else "log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


#: the between-evaluation plots a group gets where its runs recorded them: (trace, key, scale,
#: y label, log scale (True, or "symlog"), file suffix, title suffix, the paragraph that introduces it)
TRACE_PLOTS = (
    ("term", "active", 100.0, "rows above the floor (%)", False, "term", "where the hinge acts",
     "**Where the hinge acts** — the share of the term's rows above the floor (the rows that carry its gradient), "
     "averaged between evaluations, for the runs that log it"),
    ("losses", "critic_loss", 1.0, "critic loss", True, "critic", "the critic's loss",
     "**The critic's loss** — averaged between evaluations (log scale), for the runs that record it: a line that "
     "climbs by orders of magnitude is a critic that diverged, which the scores alone do not show"),
    ("losses", "q_pi", 1.0, "mean Q at the actor's actions", "symlog", "q", "the critic's Q at the policy's actions",
     "**The critic's Q** — its mean value at the actor's actions (what the Q term climbs; a discounted sum "
     "of the rewards it trains on), averaged between evaluations (symmetric log scale), for the runs that "
     "record it: a value far beyond the returns the data can reach is a critic that overestimates"),
    ("losses", "denoise", 1.0, "denoising loss", True, "denoise", "the denoising loss",
     "**The denoising loss** — the diffusion policies' score-matching loss (without the term), averaged between "
     "evaluations (log scale), for the runs that record it: still falling at the end means the budget did not "
     "train the policy out"),
)


def runs_table(runs: list[Run]) -> str:
    """CSV, one row per run: group, method, fraction, seed, gamma, margin and every summary
    number any run records (empty where a run lacks it) — for your own analysis."""
    import csv

    keys = sorted({k for r in runs for k, v in r.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "method", "fraction", "seed", "gamma", "margin", *keys])
    for r in sorted(runs, key=lambda r: (r.group, r.method, -r.fraction, r.seed)):
        margin = "" if r.gamma == 0 else ("none" if r.margin is None else r.margin)  # none: the term has no floor
        w.writerow([r.group, r.method, r.fraction, r.seed, r.gamma, margin,
                    *(r.summary.get(k, "") for k in keys)])
    return buf.getvalue()


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """``report.md`` (the CDP-minus-base summary and its forest plot ``summary.png``; per group the
    overview, final / best / last-three tables, CDP vs base, learning curves, 100%-vs-10% bars and
    gamma / margin figures) and ``runs.csv`` (one row per run), in ``out`` (default: ``root``).
    Returns the markdown file."""
    runs = load_runs(root)
    out = Path(out) if out is not None else Path(root)
    groups = group_runs(runs)
    md = [f"# Results under {root}", "", "Mean ± standard error over seeds (seed count in brackets); best mean per "
          "column in bold.", ""]
    summary = across_groups(groups)
    if summary:
        md += ["## Summary: CDP minus its base", "", "Difference of the seeds' means of the mean of the last three "
               "evaluations ± its standard error (the two methods' seeds as independent samples) and the difference "
               "in those standard errors; ahead k/n: on k of the n seeds both ran, CDP's run beat its base's with "
               "the same seed (same data subset, same initialisation seed); n: seeds of CDP / of its base.", "",
               summary, ""]
        forest = _summary_plot(groups)
        if forest is not None:
            atomic_write(out / "summary.png", forest)
            md += ["![CDP minus its base, seed-paired differences](summary.png)", ""]
    for g, rs in sorted(groups.items()):
        kind = rs[0].kind
        unit = "success rate (%)" if kind == "il" else (
            "D4RL-normalised score" if rs[0].summary.get("metric") == "d4rl_score_mean" else "return")
        png = re.sub(r"[^A-Za-z0-9_.-]+", "_", g) + ".png"
        atomic_write(out / png, _plot_curves(rs, g, unit))
        bars = png.replace(".png", "_bars.png")
        atomic_write(out / bars, _bars(rs, g, unit))
        md += [f"## {g}", "", f"{unit}; steps: {sorted({r.summary.get('step') for r in rs})}", ""]
        md += ["**Overview** — mean ± s.e. over the n seeds", "", overview(rs), ""]
        md += ["**Seed by seed** — mean of the last three evaluations; a `method − base` row: the seed-paired "
               "differences and their mean ± s.e.", "", seed_table(rs), ""]
        metrics = [("final", "at the last evaluation"), ("mean_last3", "mean of the last three evaluations"),
                   ("best", "best evaluation (max over checkpoints)")]
        for key, what in metrics:
            md += [f"**{key}** — {what}", "", table(rs, key), ""]
        hours = compute_hours(rs)
        if hours:
            md += [f"Compute in these records: {len(rs)} run{'s' if len(rs) != 1 else ''}, {hours:.1f} h of their own wall clock, evaluations "
                   "included (each run's steps × its seconds per 1k steps; one run per core)", ""]
        secs = [(r.method, r.summary["train_seconds_per_1k_steps"]) for r in rs if "train_seconds_per_1k_steps" in r.summary]
        if secs:
            per = defaultdict(list)
            for m, s in secs:
                per[m].append(s)
            load = load_range(rs)
            md += ["Training time (s per 1k steps, evaluations excluded): "
                   + ", ".join(f"{m} {np.mean(v):.0f}" for m, v in sorted(per.items()))
                   + (f"; the machine's load while they trained (1-minute average, per run): {load}" if load else ""), ""]
        versus = cdp_vs_base(rs)
        if versus:
            md += ["**CDP vs its base** — difference of mean_last3 ± its standard error (the seeds of the two "
                   "methods as independent samples), the difference in standard errors, on how many seeds both ran "
                   "CDP's run was ahead, seed counts; "
                   "the paper's full-data gain where it reports one (on D4RL's data, not these); training-time "
                   "ratio CDP / base here (the runs' own wall clock on the machine that ran most of both, empty where "
                   "none ran both; it carries whatever else shared the CPU; benchmarks/ has controlled ratios) and on "
                   "the paper's GPU", "", versus, ""]
        md += [f"![{g}]({png})", "", f"![{g}, 100% vs 10% data]({bars})", ""]
        for trace, key, scale, ylabel, log, suffix, what, intro in TRACE_PLOTS:
            fig = _plot_trace(rs, trace, key, scale, ylabel, f"{g}: {what}", log)
            if fig is not None:
                name = png.replace(".png", f"_{suffix}.png")
                atomic_write(out / name, fig)
                md += [intro, "", f"![{g}, {what} over training]({name})", ""]
        for b in sorted({base_of(r.method) for r in rs} - {None}):
            family = [r for r in rs if b in (r.method, base_of(r.method))]
            for what, plot in (("gamma", _sensitivity), ("margin", _margin_sensitivity)):
                fig = plot(family, f"{g} {b}", unit)
                if fig is not None:
                    name = png.replace(".png", f"_{b}_{what}.png")
                    atomic_write(out / name, fig)
                    md += [f"![{g}, {what} sensitivity of the contraction on {b}]({name})", ""]
    atomic_write(out / "runs.csv", runs_table(runs).encode())
    md += ["Every run's summary numbers, one row per run: [runs.csv](runs.csv)", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(md).encode())
    return path


#: A quoted report block in a markdown file: its spec line, the body the sync rewrites, the end line.
BLOCK = re.compile(r"(?P<head><!-- report: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(?P<tail><!-- /report -->)", re.S)
BLOCK_KINDS = ("overview", "summary", "versus", "seeds")


def render_block(spec: str, base: str | Path = ".", _cache: dict | None = None) -> str:
    """The table a block spec names: ``RESULTS_DIR overview GROUP``, ``RESULTS_DIR summary`` (CDP
    minus its base across groups), ``RESULTS_DIR versus GROUP`` (the CDP-vs-base table with the
    paper's figures) or ``RESULTS_DIR seeds GROUP`` (the mean of the last three evaluations seed
    by seed, :func:`seed_table`); ``RESULTS_DIR`` relative to ``base``, a ``GROUP`` with spaces quoted."""
    parts = shlex.split(spec)
    if len(parts) < 2 or parts[1] not in BLOCK_KINDS:
        raise ValueError(f"report block {spec!r}: expected 'RESULTS_DIR {{{'|'.join(BLOCK_KINDS)}}} [GROUP]'")
    root, kind, rest = parts[0], parts[1], parts[2:]
    cache = {} if _cache is None else _cache
    if root not in cache:
        cache[root] = group_runs(load_runs(Path(base) / root))
    groups = cache[root]
    if kind == "summary":
        return across_groups(groups)
    if len(rest) != 1 or rest[0] not in groups:
        raise ValueError(f"report block {spec!r}: name one group of {root}: {sorted(groups)}")
    return {"overview": overview, "versus": cdp_vs_base, "seeds": seed_table}[kind](groups[rest[0]])


def sync_blocks(path: str | Path, check: bool = False) -> list[str]:
    """Rewrite every report block in the markdown file ``path`` from its records (results folders
    relative to the file's folder) and return the specs whose tables changed. With ``check`` the
    file is left as it is (a test: are the quoted tables the records' own?)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no markdown file at {path}")
    text, cache, changed = path.read_text(), {}, []

    def fill(m: re.Match) -> str:
        body = render_block(m["spec"], path.parent, cache) + "\n"
        if body != m["body"]:
            changed.append(m["spec"])
        return m["head"] + body + m["tail"]

    new = BLOCK.sub(fill, text)
    if changed and not check:
        atomic_write(path, new.encode())
    return changed
