"""Run-folder CSV logs: appended rows keep their columns when the set of keys changes."""

import csv

from cdp.runlog import append_csv, drop_rows_after


def test_append_csv_keeps_columns_aligned(tmp_path):
    p = tmp_path / "eval.csv"
    append_csv(p, {"step": 1, "success": 0.5, "modes": 3})
    append_csv(p, {"step": 2, "success": 0.0})  # no modes this time: left empty, not shifted
    append_csv(p, {"step": 3, "modes": 2, "success": 1.0, "spread": 0.1})  # a new column: the file grows one
    rows = list(csv.DictReader(p.open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert [r["modes"] for r in rows] == ["3", "", "2"] and [r["success"] for r in rows] == ["0.5", "0.0", "1.0"]
    assert [r["spread"] for r in rows] == ["", "", "0.1"]
    drop_rows_after(p, 2)
    assert [r["step"] for r in csv.DictReader(p.open())] == ["1", "2"]
