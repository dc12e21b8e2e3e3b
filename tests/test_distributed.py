"""One imitation run on two processes (torchrun, gloo, CPU) trains as one process does on the
whole batch, and resumes on another number of processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_il import reach_file  # noqa: F401  (fixture)

from cdp.il.trainer import ILTrainConfig, train

# float32 rounding: half-batch gradient means averaged vs one whole-batch mean differ in the last
# bits, and Adam's normalised step turns that into up to ~5e-6 on a weight after 4 steps at lr 1e-3
# (0.5% of one step); 5% of one step is the bound
ATOL = 5e-5

RUNNER = """
import json, sys
from cdp.il.trainer import ILTrainConfig, train
kw = json.loads(sys.argv[1])
train(ILTrainConfig(**kw), sys.argv[2], progress=False)
"""


def config(dataset: str, steps: int) -> dict:
    # a 4 x 2 chunk: the exact eigenvalue (no random search starts), so one process and two draw alike
    return dict(policy="cdp-mlp", task="reach", dataset=dataset, steps=steps, batch_size=16, horizon=4, n_action_steps=2,
                eval_every=4, eval_episodes=2, checkpoint_every=2, log_every=1, lr=1e-3, sample_steps=2)


def torchrun(processes: int, kw: dict, out, tmp_path) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           str(script), json.dumps(kw), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=False)["policy"]


def losses(run) -> list[float]:
    import csv

    return [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open())]


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_whole_batch_and_resume_on_one(reach_file, tmp_path):  # noqa: F811
    two, one, mixed = tmp_path / "two", tmp_path / "one", tmp_path / "mixed"
    torchrun(2, config(reach_file, 4), two, tmp_path)
    train(ILTrainConfig(**config(reach_file, 4)), one, progress=False)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)  # each logged loss: the whole batch's
    w2, w1 = weights(two), weights(one)
    assert w2.keys() == w1.keys()
    for k in w1:
        assert torch.allclose(w2[k], w1[k], atol=ATOL), k
    assert losses(one)[-1] != losses(one)[0]  # it trained
    # resume the two-process run on one process (and an evaluation at step 4 in between)
    torchrun(2, config(reach_file, 4), mixed, tmp_path)
    train(ILTrainConfig(**config(reach_file, 8)), mixed, progress=False)
    train(ILTrainConfig(**config(reach_file, 8)), one, progress=False)
    assert losses(mixed) == pytest.approx(losses(one), rel=1e-5)
    for k, v in weights(one).items():
        assert torch.allclose(weights(mixed)[k], v, atol=ATOL), k
    assert json.loads((mixed / "summary.json").read_text())["evals"] == 2


def test_several_processes_need_a_diffusion_policy_and_a_divisible_batch():
    from cdp.distributed import Group

    g = Group(rank=1, world=2)
    assert g.rows(16) == slice(8, 16) and not g.is_main
    with pytest.raises(ValueError, match="batch size 15 does not divide among 2 processes"):
        g.rows(15)
    assert Group().average({"a": torch.tensor(2.0)})["a"] == 2.0  # one process: as it is
