"""`cdp diagnose` on small real runs: an imitation diffusion policy and an offline-RL CDP agent."""

import json

import numpy as np
import pytest

pytest.importorskip("h5py")
pytest.importorskip("minari")

from cdp.data.robomimic import write_robomimic  # noqa: E402
from cdp.diagnose import diagnose, flow_from_run, level_table, normalised_lambda, run_diagnostics  # noqa: E402
from cdp.il.reach import make_demos  # noqa: E402
from cdp.il.trainer import ILTrainConfig  # noqa: E402
from cdp.il.trainer import train as il_train  # noqa: E402


@pytest.mark.slow
def test_diagnostics_on_trained_runs(tiny_dataset, tmp_path):
    import cdp.rl.trainer as T
    from cdp.rl.edp import EDP, EDPConfig

    data = write_robomimic(tmp_path / "reach.hdf5", make_demos(20, "ph"))
    il_run = tmp_path / "il"
    il_train(ILTrainConfig(policy="cdp-mlp", task="reach", dataset=str(data), steps=20, batch_size=16, eval_every=20,
                           eval_episodes=1, sample_steps=2), il_run, progress=False)
    rl_run = tmp_path / "rl"
    orig = T.make_agent
    T.make_agent = lambda c, o, a, device="cpu": EDP(o, a, EDPConfig(hidden=32, sample_steps=2, n_candidates=2), device)
    try:
        T.train(T.TrainConfig(algo="edp", dataset=tiny_dataset, steps=4, batch_size=16, eval_every=4, eval_episodes=1,
                              checkpoint_every=4), rl_run, progress=False)
        flow = flow_from_run(rl_run, states=5)
        assert flow.cond.shape == (5, 11) and flow.actions.shape == (5, 3) and flow.prediction == "x0"
        r = diagnose(flow, steps=200, spread_samples=4)
    finally:
        T.make_agent = orig
    # the rate at the term's levels: an EDP run is read at CDP's window (t <= 0.1: 5 of 50) and beyond
    assert [row["level"] for row in r["levels"]] == [1, 2, 3, 4, 5, 10, 25, 45]
    assert [row["in_window"] for row in r["levels"]] == [True] * 5 + [False] * 3
    rates = normalised_lambda(flow, flow.actions, [i / 50 for i in (1, 2, 3, 4, 5, 10, 25, 45)], seed=2)
    for row, rate in zip(r["levels"], rates):
        assert row["median"] == pytest.approx(float(rate.median()), abs=1e-6)
        assert row["above_floor"] == pytest.approx(float((rate > -0.1).float().mean()))
        assert row["above_zero"] == pytest.approx(float((rate > 0).float().mean()))
    assert "| 45 (of 50) | no |" in level_table([r])
    assert len(r["ratio"]) == 5 and len(r["lambda_on_data"]) == 9 and r["action_spread"] >= 0
    # the bound holds for every pair (a theorem for small perturbations), up to the quadrature's few per cent
    assert r["bound_holds"] == 1.0 and np.all(np.isfinite(r["bound"]))
    assert all(0 < x < 10 for x in r["ratio"])
    png = run_diagnostics([str(il_run)], tmp_path / "out", states=4, steps=10)
    res = json.loads((tmp_path / "out" / "diagnostics.json").read_text())
    assert png.stat().st_size > 1000 and res[0]["name"] == "reach/cdp-mlp-f1-auto-x256-s0" and len(res[0]["ratio"]) == 4
    # imitation applies the term at every t: levels 1, 2, T/10, T/2 and T of its T = 100
    assert [row["level"] for row in res[0]["levels"]] == [1, 2, 10, 50, 100]
    assert "| reach/cdp-mlp-f1-auto-x256-s0 | 1 (of 100) | yes |" in (tmp_path / "out" / "diagnostics.md").read_text()
    with pytest.raises(ValueError, match="not a diffusion policy"):
        bc = tmp_path / "gmm"
        il_train(ILTrainConfig(policy="bc-gmm", task="reach", dataset=str(data), steps=2, batch_size=8, eval_every=2,
                               eval_episodes=1), bc, progress=False)
        flow_from_run(bc)
