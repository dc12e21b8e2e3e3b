"""`cdp report`: the table's numbers against a hand computation on fixture records."""

import json
import math

import pytest

from cdp.report import _method, compute_hours, load_runs, mean_se, table, write_report


def write_record(root, algo, fraction, seed, final, best, curve):
    cfg = {"algo": algo, "dataset": "cdp/hopper/medium-replay-v0", "fraction": fraction, "seed": seed, "steps": 300}
    if algo == "cdp":
        cfg["gamma"] = 1.0 if seed == 9 else 0.1
    rec = {"config": cfg, "summary": {"step": 300, "final": final, "best": best, "metric": "d4rl_score_mean",
                                      "train_seconds_per_1k_steps": 10.0, "seconds_per_1k_steps": 12.0 + seed},
           "eval": [{"step": str(100 * (i + 1)), "d4rl_score_mean": str(v)} for i, v in enumerate(curve)]}
    p = root / "cdp_hopper_medium-replay-v0" / f"{algo}-{fraction}-{seed}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))


def test_method_labels():
    assert _method("cdp-f0.1-g1-s2") == "cdp-g1" and _method("edp-f1-s0") == "edp"
    assert _method("edp-f1-iql-s3") == "edp-iql" and _method("dp-unet-f0.1-s1") == "dp-unet"


def test_table_equals_hand_computation(tmp_path):
    finals = {("edp", 1.0): [10.0, 12.0, 17.0], ("cdp", 1.0): [11.0, 13.0, 18.0], ("edp", 0.1): [5.0, 7.0, 6.0],
              ("cdp", 0.1): [4.0, 5.0, 6.0]}
    for (algo, f), vals in finals.items():
        for seed, v in enumerate(vals):
            write_record(tmp_path, algo, f, seed, v, v + 1, [v - 1, v])
    write_record(tmp_path, "cdp", 1.0, 9, 99.0, 99.0, [1, 99.0])  # gamma 1: a method of its own
    runs = load_runs(tmp_path)
    assert len(runs) == 13
    md = table([r for r in runs if r.method != "cdp-g1"], "final")
    mu, se = 14.0, math.sqrt(((11 - 14) ** 2 + (13 - 14) ** 2 + (18 - 14) ** 2) / 2) / math.sqrt(3)
    assert mean_se([11.0, 13.0, 18.0]) == pytest.approx((mu, se))
    lines = md.splitlines()
    assert lines[0] == "| method | 100% data | 10% data |"
    assert lines[2] == f"| cdp | **{mu:.1f} ± {se:.1f} (3)** | 5.0 ± 0.6 (3) |"
    assert lines[3] == "| edp | 13.0 ± 2.1 (3) | **6.0 ± 0.6 (3)** |"
    path = write_report(tmp_path)
    text = path.read_text()
    assert "| cdp-g1 | **99.0 (1)** |  |" in text  # one seed: no standard error and "D4RL-normalised score" in text
    # 300 steps per run at 12 + seed s per 1k steps: 4 methods x (12 + 13 + 14) + the seed-9 run's 21
    hours = 300 * (4 * (12 + 13 + 14) + 21) / 1000 / 3600
    assert compute_hours(runs) == pytest.approx(hours)
    assert f"13 runs, {hours:.1f} h of their own wall clock" in text
    import csv

    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert len(rows) == 13 and "(runs.csv)" in text
    g1 = [r for r in rows if r["method"] == "cdp-g1"]
    assert len(g1) == 1 and float(g1[0]["final"]) == 99.0 and g1[0]["gamma"] == "1.0" and g1[0]["margin"] == "0.1"
    edp0 = next(r for r in rows if r["method"] == "edp" and r["fraction"] == "0.1" and r["seed"] == "2")
    assert float(edp0["final"]) == 6.0 and float(edp0["mean_last3"]) == 5.5 and edp0["margin"] == ""
    last3 = table([r for r in runs if r.method == "edp"], "mean_last3").splitlines()[2]  # curves [v - 1, v]
    assert last3 == "| edp | 12.5 ± 2.1 (3) | 5.5 ± 0.6 (3) |"
    assert (tmp_path / "cdp_hopper_medium-replay-v0.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no results folder"):
        load_runs(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run records"):
        load_runs(tmp_path / "empty")


def test_imitation_records_report_success_in_percent(tmp_path):
    for seed, (final, best) in enumerate([(0.5, 0.75), (0.25, 0.5)]):
        cfg = {"policy": "cdp-dit", "task": "reach-hard", "dataset": "data/il/reach-hard_ph.hdf5", "fraction": 0.1,
               "seed": seed, "steps": 3000}
        rec = {"config": cfg, "summary": {"step": 3000, "final": final, "best": best, "mean_last3": final,
                                          "modes_final": 3 + 2 * seed, "action_spread_final": 0.1 + 0.2 * seed,
                                          "stages_final": 1.0 + 2 * seed},
               "eval": [{"step": "1500", "success_rate": str(best)}, {"step": "3000", "success_rate": str(final)}]}
        if seed == 0:  # a record written since records carry the losses
            rec["losses"] = [{"step": 1500, "loss": 0.31, "denoise": 0.3, "contraction": 0.01},
                             {"step": 3000, "loss": 0.21, "denoise": 0.2, "contraction": 0.01}]
        (tmp_path / f"r{seed}.json").write_text(json.dumps(rec))
    runs = load_runs(tmp_path)
    assert {r.group for r in runs} == {"reach-hard/reach-hard_ph"} and {r.method for r in runs} == {"cdp-dit"}
    assert table(runs, "final").splitlines()[2] == "| cdp-dit | 37.5 ± 12.5 (2) |"
    assert table(runs, "best").splitlines()[2] == "| cdp-dit | 62.5 ± 12.5 (2) |"
    assert runs[0].curve == [(1500, 75.0), (3000, 50.0)]
    from cdp.report import overview

    ov = overview(runs).splitlines()
    assert ov[0] == "| data | method | n | final | mean of last 3 | best | goal orders | stages reached | spread |"
    assert ov[2] == ("| 10% | cdp-dit | 2 | 37.5 ± 12.5 | 37.5 ± 12.5 | 62.5 ± 12.5 | 4.0 ± 1.0 | 2.00 ± 1.00 "
                     "| 0.20 ± 0.10 |")
    md = write_report(tmp_path).read_text()
    assert "success rate (%)" in md and "The denoising loss" in md and "The critic's loss" not in md
    assert (tmp_path / "reach-hard_reach-hard_ph_denoise.png").stat().st_size > 1000


def test_two_records_of_one_run_are_refused_not_mixed(tmp_path):
    """Two studies' folders under one root may name their runs alike (a pilot's cdp-f1-s0 beside a
    study's): the report must not average them as seeds of one method."""
    write_record(tmp_path / "study", "cdp", 1.0, 0, 10.0, 10.0, [10.0])
    write_record(tmp_path / "study", "edp", 1.0, 0, 9.0, 9.0, [9.0])
    assert len(load_runs(tmp_path)) == 2
    write_record(tmp_path / "pilot", "cdp", 1.0, 0, 50.0, 50.0, [50.0])
    with pytest.raises(ValueError, match=r"pilot/.*cdp-1.0-0.json|study/.*cdp-1.0-0.json") as err:
        load_runs(tmp_path)
    assert "pilot" in str(err.value) and "study" in str(err.value) and "same run" in str(err.value)
    assert len(load_runs(tmp_path / "study")) == 2  # each folder alone reports


def test_the_time_ratio_compares_runs_on_one_machine(tmp_path):
    """CDP / EDP training seconds from the runs both trained on one machine (the records' legs),
    not a mean over hosts several times apart in speed."""
    from cdp.report import machine, time_ratio

    slow, fast = "cpu (Slow, AVX2) on vm", "cpu (Fast, AVX512) on vm"
    runs = []
    for algo, seed, legs, secs in [("edp", 0, [slow], 160.0), ("edp", 1, [fast, fast], 48.0), ("edp", 2, [fast], 52.0),
                                   ("cdp", 0, [fast], 55.0), ("cdp", 1, [fast], 53.0), ("cdp", 2, [slow, fast], 90.0)]:
        write_record(tmp_path, algo, 1.0, seed, 1.0, 1.0, [1.0])
        path = tmp_path / "cdp_hopper_medium-replay-v0" / f"{algo}-1.0-{seed}.json"
        rec = json.loads(path.read_text())
        rec["summary"]["train_seconds_per_1k_steps"] = secs
        rec["summary"]["legs"] = [{"from": 0, "to": 100, "where": w, "seconds": 1.0} for w in legs]
        path.write_text(json.dumps(rec))
    runs = load_runs(tmp_path)
    assert sorted(machine(r) for r in runs) == sorted(["", slow, fast, fast, fast, fast])  # cdp s2 moved hosts
    # on the fast machine: CDP (55 + 53) / 2 = 54 against EDP (48 + 52) / 2 = 50; the slow EDP seed
    # would have made it 54 / 86.7 = 0.62
    assert time_ratio(runs, "cdp", "edp") == pytest.approx(54.0 / 50.0)
    assert time_ratio([r for r in runs if machine(r) != fast or r.method == "edp"], "cdp", "edp") is None


def test_the_report_names_the_machine_load_the_records_trained_under(tmp_path):
    """Each run's load is its legs' loads weighted by their steps; the report gives their range."""
    from cdp.report import load_range, write_report

    for algo, seed, legs in [("edp", 0, [(0, 100, 1.0), (100, 400, 3.0)]),  # (1 * 100 + 3 * 300) / 400 = 2.5
                             ("cdp", 0, [(0, 200, 1.2)]),
                             ("cdp", 1, None)]:  # a record from before loads were kept
        write_record(tmp_path, algo, 1.0, seed, 1.0, 1.0, [1.0])
        path = tmp_path / "cdp_hopper_medium-replay-v0" / f"{algo}-1.0-{seed}.json"
        rec = json.loads(path.read_text())
        rec["summary"]["train_seconds_per_1k_steps"] = 10.0
        if legs:
            rec["summary"]["legs"] = [{"from": a, "to": b, "where": "w", "seconds": 1.0, "load": x, "cores": 2}
                                      for a, b, x in legs]
        path.write_text(json.dumps(rec))
    runs = load_runs(tmp_path)
    assert load_range(runs) == "1.2-2.5 on 2 cores"
    assert load_range([r for r in runs if r.method == "cdp"]) == "1.2 on 2 cores"
    assert load_range([r for r in runs if r.seed == 1]) is None
    write_report(tmp_path, tmp_path / "out")
    assert "load while they trained (1-minute average, per run): 1.2-2.5 on 2 cores" in (tmp_path / "out" / "report.md").read_text()


def test_cdp_vs_base_differences_and_paper_gain(tmp_path):
    """CDP - EDP per fraction from the same fixture as a hand computation; the paper's +8.4 sits
    beside the hopper medium-replay row; gamma variants compare with the same base."""
    from cdp.report import base_of, cdp_vs_base

    for seed, (e, c) in enumerate([(10.0, 13.0), (20.0, 21.0)]):
        write_record(tmp_path, "edp", 1.0, seed, e, e, [e, e])
        write_record(tmp_path, "cdp", 1.0, seed, c, c, [c, c])
    write_record(tmp_path, "cdp", 1.0, 9, 40.0, 40.0, [40.0])  # gamma 1
    runs = load_runs(tmp_path)
    assert {r.gamma for r in runs} == {0.0, 0.1, 1.0}
    assert base_of("cdp-g1") == "edp" and base_of("cdp-unet-g1-mNone") == "dp-unet" and base_of("dp-dit") is None
    assert base_of("cdp-g1-official_frobenius") == "edp" and base_of("cdp-iql-literal") == "edp-iql"
    # the term's products and estimator are the CDP arm's own: its base is the plain policy
    assert base_of("cdp-unet-cnn-auto-x256") == "dp-unet-cnn" and base_of("cdp-dit-fd-x1024") == "dp-dit"
    lines = cdp_vs_base(runs).splitlines()
    # CDP mean 17, EDP mean 15; s.e. of (13, 21) = 4, of (10, 20) = 5, of the difference
    # sqrt(16 + 25) = 6.40, so 2 / 6.40 = 0.31 of it; CDP ahead on both seeds (13 > 10, 21 > 20)
    assert lines[2].startswith("| cdp vs edp | +2.0 ± 6.4 (0.3 se; ahead 2/2; n 2/2) | +8.4 | 1.00x | 1.14x |")
    # one seed (9, no EDP twin): no standard error, no pair
    assert lines[3].startswith("| cdp-g1 vs edp | +25.0 (n 1/2) |  |")
    from cdp.report import difference_cell

    # s.e. of (1, 3) = 1, of (2, 2, 2) = 0: the difference's is 1; identical seeds leave no s.e. to count in
    assert difference_cell([1.0, 3.0], [2.0, 2.0, 2.0], (1, 2)) == "+0.0 ± 1.0 (0.0 se; ahead 1/2; n 2/3)"
    assert difference_cell([2.0, 2.0], [1.0, 1.0], (2, 2)) == "+1.0 (ahead 2/2; n 2/2)"
    assert difference_cell([5.0, 1.0], [4.0, 2.0, 9.0], (1, 2)) == "-2.0 ± 2.9 (0.7 se; ahead 1/2; n 2/3)"  # sqrt(4 + 13 / 3)
    import cdp.paper

    with pytest.MonkeyPatch.context() as mp:  # a task the paper has no number for: no empty paper column
        mp.setattr(cdp.paper, "task_key", lambda group: None)
        bare = cdp_vs_base(runs).splitlines()
    assert bare[0] == "| CDP - base | 100% data | time ratio | paper ratio |"
    assert bare[2] == "| cdp vs edp | +2.0 ± 6.4 (0.3 se; ahead 2/2; n 2/2) | 1.00x | 1.14x |"
    # where the runs logged the term's stats: the share of rows above the hinge's floor, per run
    # over its stretches, then over seeds: seed 0 (1% + 3%) / 2 = 2%, seed 1 4%: 3.00%
    from cdp.report import hinge_active

    for r, active in zip((r for r in runs if r.method == "cdp"), ([0.01, 0.03], [0.04])):
        r.term = [{"step": 100 * (i + 1), "active": a, "rate": -0.5} for i, a in enumerate(active)]
    assert hinge_active(runs, "cdp", 1.0) == pytest.approx(0.03) and hinge_active(runs, "cdp-g1", 1.0) is None
    with_term = cdp_vs_base(runs).splitlines()
    assert with_term[0] == "| CDP - base | 100% data | paper (100%) | hinge active (100%) | time ratio | paper ratio |"
    assert with_term[2].startswith("| cdp vs edp | +2.0 ± 6.4 (0.3 se; ahead 2/2; n 2/2) | +8.4 | 3.00% | 1.00x |")
    assert with_term[3].startswith("| cdp-g1 vs edp | +25.0 (n 1/2) |  |  |")
    text = write_report(tmp_path).read_text()
    # the summary across groups: the same differences; CDP beat EDP on both paired seeds (13 > 10, 21 > 20)
    assert "| cdp/hopper/medium-replay-v0 | cdp − edp | +2.0 ± 6.4 (0.3 se; ahead 2/2; n 2/2) |" in text
    assert "| cdp/hopper/medium-replay-v0 | cdp-g1 − edp | +25.0 (n 1/2) |" in text  # its seed 9 has no EDP twin
    assert "CDP vs its base" in text and (tmp_path / "cdp_hopper_medium-replay-v0_bars.png").stat().st_size > 1000
    assert (tmp_path / "cdp_hopper_medium-replay-v0_edp_gamma.png").stat().st_size > 1000  # gammas 0, 0.1, 1


def test_learning_curves_keep_each_methods_colour_across_panels(tmp_path, monkeypatch):
    import cdp.report as report

    write_record(tmp_path, "bc", 1.0, 0, 1.0, 1.0, [0.0, 1.0])  # only at 100%: shifts the colour cycle there
    for f in (1.0, 0.1):
        for algo in ("cdp", "edp"):
            write_record(tmp_path, algo, f, 0, 2.0, 2.0, [1.0, 2.0])
    figs = []
    monkeypatch.setattr(report, "_png", lambda fig: figs.append(fig) or b"")
    report._plot_curves(load_runs(tmp_path), "t", "score")
    (fig,) = figs
    panels = [{ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in fig.axes]
    assert set(panels[0]) == {"bc (1)", "cdp (1)", "edp (1)"} and set(panels[1]) == {"cdp (1)", "edp (1)"}
    assert panels[0]["cdp (1)"] == panels[1]["cdp (1)"] and panels[0]["edp (1)"] == panels[1]["edp (1)"]
    assert all(ax.get_legend() is not None for ax in fig.axes)  # each panel names its own lines


def test_paired_differences_and_summary_figure(tmp_path):
    from cdp.report import group_runs, paired_differences

    # mean of the last three = the curve's mean; edp has seeds 0-2, cdp seeds 0 and 2 at 100%, seed 1 at 10%
    for algo, f, seed, curve in [("edp", 1.0, 0, [1, 2, 3]), ("edp", 1.0, 1, [5, 5, 5]), ("edp", 1.0, 2, [0, 0, 3]),
                                 ("cdp", 1.0, 0, [4, 4, 4]), ("cdp", 1.0, 2, [2, 2, 2]),
                                 ("edp", 0.1, 1, [1, 1, 1]), ("cdp", 0.1, 1, [0, 0, 0]), ("bc", 1.0, 0, [9, 9, 9])]:
        write_record(tmp_path, algo, f, seed, curve[-1], max(curve), curve)
    rows = paired_differences(group_runs(load_runs(tmp_path)))
    label = "cdp/hopper/medium-replay-v0: cdp − edp"
    assert rows == [(label, 1.0, [pytest.approx(2.0), pytest.approx(1.0)]), (label, 0.1, [pytest.approx(-1.0)])]
    text = write_report(tmp_path).read_text()
    assert "![CDP minus its base, seed-paired differences](summary.png)" in text
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sync_rewrites_quoted_tables_from_the_records(tmp_path, capsys):
    from cdp.cli import main
    from cdp.report import render_block, sync_blocks

    for algo, f, seed, v in [("edp", 1.0, 0, 10.0), ("edp", 1.0, 1, 12.0), ("cdp", 1.0, 0, 13.0), ("cdp", 1.0, 1, 11.0)]:
        write_record(tmp_path / "res", algo, f, seed, v, v, [v, v, v])
    doc = tmp_path / "README.md"
    group = "cdp/hopper/medium-replay-v0"
    doc.write_text(f"intro\n<!-- report: res overview {group} -->\n| old | table |\n<!-- /report -->\nmiddle\n"
                   "<!-- report: res summary -->\n<!-- /report -->\nend\n")
    assert sync_blocks(doc, check=True) == [f"res overview {group}", "res summary"]
    assert "| old | table |" in doc.read_text()  # check changes nothing
    assert main(["report", "--sync", str(doc), "--check"]) == 1
    assert sync_blocks(doc) == [f"res overview {group}", "res summary"]
    text = doc.read_text()
    assert "| 100% | cdp | 2 | 12.0 ± 1.0 | 12.0 ± 1.0 | 12.0 ± 1.0 |" in text  # mean 12, s.e. 1 over seeds
    assert "| cdp/hopper/medium-replay-v0 | cdp − edp | +1.0 ± 1.4 (0.7 se; ahead 1/2; n 2/2) |" in text  # s.e. sqrt(1 + 1)
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n")
    assert sync_blocks(doc) == [] and main(["report", "--sync", str(doc), "--check"]) == 0  # now in step
    with pytest.raises(ValueError, match="name one group"):
        render_block("res overview nope", tmp_path)
    with pytest.raises(ValueError, match="expected"):
        render_block("res table", tmp_path)


def test_the_seed_by_seed_table_pairs_each_contraction_run_with_its_bases_seed(tmp_path):
    from cdp.report import render_block

    for algo, seed, v in [("edp", 0, 10.0), ("edp", 1, 12.0), ("edp", 2, 17.0),
                          ("cdp", 0, 13.0), ("cdp", 1, 11.0), ("cdp", 3, 20.0)]:  # seed 2 / 3 ran one method only
        write_record(tmp_path, algo, 1.0, seed, v, v, [v - 5, v, v, v])  # the mean of the last three: v
    lines = render_block(". seeds cdp/hopper/medium-replay-v0", tmp_path).splitlines()
    assert lines[0] == "| data | method | seed 0 | seed 1 | seed 2 | seed 3 | mean ± s.e. |"
    # cdp: mean 44 / 3, s.e. sqrt(44.667 / 2) / sqrt(3) = 2.73; paired on seeds 0 and 1: +3, -1, mean 1, s.e. 2
    assert lines[2:] == ["| 100% | cdp | 13.0 | 11.0 |  | 20.0 | 14.7 ± 2.7 |",
                         "| 100% | cdp − edp | +3.0 | -1.0 |  |  | +1.0 ± 2.0 |",
                         "| 100% | edp | 10.0 | 12.0 | 17.0 |  | 13.0 ± 2.1 |"]
    assert "\n".join(lines) in write_report(tmp_path).read_text()


def test_margin_sensitivity_plots_each_margin_at_one_gamma_against_the_base(monkeypatch):
    import cdp.report as report
    from cdp.report import Run

    def run(method, seed, gamma, margin, score, modes):
        return Run("reach/reach_ph", method, 0.1, seed, "il", {"mean_last3": score, "modes_final": modes}, [],
                   gamma, margin)

    runs = [run("cdp-dit-g0", s, 0.0, 0.1, 20.0 + s, 6) for s in (0, 1)]  # the base
    for m, sc in ((0.0, 30.0), (0.1, 40.0), (None, 10.0)):
        runs += [run("cdp-dit", s, 0.1, m, sc + 2 * s, 5) for s in (0, 1)]
    runs.append(run("cdp-dit-g1", 0, 1.0, 0.1, 0.0, 0))  # another gamma: not in this figure
    assert report._margin_sensitivity(runs[:-3], "t", "success") is None  # two margins only: no figure
    figs = []
    monkeypatch.setattr(report, "_png", lambda fig: figs.append(fig) or b"")
    report._margin_sensitivity(runs, "t", "success")
    ax = figs[0].axes[0]
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [0, 1, 2] and list(ys) == [31.0, 41.0, 11.0]  # margins 0, 0.1, none: mean over seeds
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.1", "none"]
    assert any(list(ln.get_ydata()) == [20.5, 20.5] for ln in ax.lines)  # base mean as a dashed line


def test_records_carry_the_losses_and_the_terms_share_between_evaluations_and_the_report_plots_it(tmp_path):
    from cdp.runlog import loss_trace, term_trace, write_record as record_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algo": "cdp", "dataset": "cdp/hopper/medium-replay-v0",
                                                 "fraction": 1.0, "seed": 0, "steps": 300}))
    (run / "summary.json").write_text(json.dumps({"step": 300, "final": 5.0, "best": 6.0, "metric": "d4rl_score_mean"}))
    (run / "eval.csv").write_text("step,d4rl_score_mean\n150,4.0\n300,5.0\n")
    rows = [(50, 0.5, -0.3), (100, 0.1, -0.2), (150, 0.3, -0.1), (200, 0.0, -0.4), (250, 0.2, -0.2), (300, 0.4, -0.3)]
    (run / "metrics.csv").write_text("step,contraction,contraction_active,contraction_rate\n"
                                     + "".join(f"{s},0.01,{a},{r}\n" for s, a, r in rows))
    trace = term_trace(run, [150, 300])  # by hand: the rows in (0, 150] and (150, 300]
    assert [t["step"] for t in trace] == [150, 300]
    assert trace[0]["active"] == pytest.approx(0.3) and trace[0]["rate"] == pytest.approx(-0.2)
    assert trace[1]["active"] == pytest.approx(0.2) and trace[1]["rate"] == pytest.approx(-0.3)
    out = tmp_path / "results"
    record_run(run, out / "cdp_hopper_medium-replay-v0" / "cdp-f1-s0.json")
    rec = json.loads((out / "cdp_hopper_medium-replay-v0" / "cdp-f1-s0.json").read_text())
    assert rec["term"] == trace
    # the losses likewise, the term's stats and the clock left out: (0.01 * 3) / 3 in each stretch
    assert rec["losses"] == [{"step": 150, "contraction": pytest.approx(0.01)}, {"step": 300, "contraction": pytest.approx(0.01)}]
    md = write_report(out).read_text()
    assert "Where the hinge acts" in md and (out / "cdp_hopper_medium-replay-v0_term.png").stat().st_size > 1000
    (run / "metrics.csv").write_text("step,contraction\n100,0.0\n")  # a run that does not log the stats: no trace
    assert term_trace(run, [150, 300]) == []
    # a critic that diverged shows in the record's losses: the rows of each stretch, by hand
    # (a column added when the run resumed under a newer version, empty before, averages its own rows)
    (run / "metrics.csv").write_text("step,critic_loss,actor_loss,q_loss,seconds\n100,20,-1,,9\n150,40,-1,,12\n"
                                     "200,1000,-0.5,,15\n300,3000,-0.5,-0.9,20\n400,5,0,-1,30\n")
    assert loss_trace(run, [150, 300]) == [{"step": 150, "critic_loss": 30.0, "actor_loss": -1.0},
                                           {"step": 300, "critic_loss": 2000.0, "actor_loss": -0.5, "q_loss": -0.9}]
    assert not (out / "cdp_hopper_medium-replay-v0_critic.png").exists()  # no critic in the first record
    record_run(run, out / "cdp_hopper_medium-replay-v0" / "cdp-f1-s0.json")
    md = write_report(out).read_text()
    assert "The critic's loss" in md and (out / "cdp_hopper_medium-replay-v0_critic.png").stat().st_size > 1000
    assert "Where the hinge acts" not in md  # this record has no term stats
    assert "The critic's Q" not in md and not (out / "cdp_hopper_medium-replay-v0_q.png").exists()
    # the critic's mean Q at the actor's actions goes with the losses, and gets its own figure
    (run / "metrics.csv").write_text("step,critic_loss,q_pi,seconds\n100,20,3.5,9\n150,40,4.5,12\n300,50,80,20\n")
    assert loss_trace(run, [150, 300]) == [{"step": 150, "critic_loss": 30.0, "q_pi": 4.0},
                                           {"step": 300, "critic_loss": 50.0, "q_pi": 80.0}]
    record_run(run, out / "cdp_hopper_medium-replay-v0" / "cdp-f1-s0.json")
    md = write_report(out).read_text()
    assert "The critic's Q" in md and (out / "cdp_hopper_medium-replay-v0_q.png").stat().st_size > 1000
