"""The regulariser at its defaults keeps both modes of a two-mode action distribution; a huge
weight with no margin does not. Small real training runs (~20 s on 2 cores)."""

import pytest
import torch

from cdp.contraction import ContractionConfig
from cdp.toy import two_mode_2d
from cdp.toy_train import ToyTrainConfig, train_toy

MIX = two_mode_2d(weight=0.7)


@pytest.mark.slow
def test_default_regulariser_keeps_both_modes_and_a_huge_one_collapses():
    data_weight = float((MIX.sample(1000, torch.Generator().manual_seed(0))[1] == 0).float().mean())
    base = ToyTrainConfig(steps=2000, seed=0)
    cdp = train_toy(MIX, ToyTrainConfig(**{**base.__dict__, "contraction": ContractionConfig()}))
    assert abs(cdp.mode_weights[0] - data_weight) < 0.12, cdp.mode_weights
    assert min(cdp.mode_weights) > 0.15
    assert cdp.on_support > 0.85
    assert cdp.within_mode_std < 2 * MIX.stds[0]

    huge = train_toy(MIX, ToyTrainConfig(**{**base.__dict__, "steps": 600,
                                            "contraction": ContractionConfig(gamma=100.0, margin=None)}))
    # no margin: the term is unbounded below and wins over score matching; samples leave the modes
    assert huge.on_support < 0.3, (huge.on_support, huge.mode_weights)
