"""`cdp diagnose` on small real runs: an imitation diffusion policy and an offline-RL CDP agent."""

import json

import numpy as np
import pytest

pytest.importorskip("h5py")
pytest.importorskip("minari")

from cdp.data.robomimic import write_robomimic  # noqa: E402
from cdp.diagnose import diagnose, flow_from_run, run_diagnostics  # noqa: E402
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
    assert len(r["ratio"]) == 5 and len(r["lambda_on_data"]) == 9 and r["action_spread"] >= 0
    # the bound holds for every pair (a theorem for small perturbations), up to the quadrature's few per cent
    assert r["bound_holds"] == 1.0 and np.all(np.isfinite(r["bound"]))
    assert all(0 < x < 10 for x in r["ratio"])
    png = run_diagnostics([str(il_run)], tmp_path / "out", states=4, steps=10)
    res = json.loads((tmp_path / "out" / "diagnostics.json").read_text())
    assert png.stat().st_size > 1000 and res[0]["name"] == "reach/cdp-mlp-f1-s0" and len(res[0]["ratio"]) == 4
    with pytest.raises(ValueError, match="not a diffusion policy"):
        bc = tmp_path / "gmm"
        il_train(ILTrainConfig(policy="bc-gmm", task="reach", dataset=str(data), steps=2, batch_size=8, eval_every=2,
                               eval_episodes=1), bc, progress=False)
        flow_from_run(bc)
