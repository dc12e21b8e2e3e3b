import os

import pytest
import torch

# One intra-op thread: the suite's networks are small, and on a 2-core machine with a training
# run on the other core torch's two spinning threads thrash (one test went from 20 s to 555 s).
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one test process per core this process may use, at most 8 (each holds torch,
    ~0.5 GB, and the ~40 training tests spread no further)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def pytest_collection_modifyitems(items):
    """The tests that train (marked slow, up to minutes each) first: handed out one at a time
    to the test processes (pytest-xdist's load scheduling), the long ones then spread over them
    instead of one ending last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_sym_spectrum_map(B: int, D: int, evals: torch.Tensor, skew: float = 1.0, seed: int = 0):
    """A linear map x -> A_b x with sym(A_b) = Q diag(evals) Q^T and a random skew part."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(B, D, D, dtype=torch.float64, generator=g))[0]
    S = Q @ torch.diag_embed(evals.expand(B, D)) @ Q.transpose(1, 2)
    K = torch.randn(B, D, D, dtype=torch.float64, generator=g)
    A = S + skew * (K - K.transpose(1, 2))
    return A, (lambda x: torch.einsum("bij,bj->bi", A, x))


@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch):
    """A 600-step random-policy Hopper-v5 Minari dataset in a per-test local store."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from cdp.data.generate import rollout

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    eps = rollout("Hopper-v5", None, 600, seed=0)
    bufs = [EpisodeBuffer(id=i, infos={}, **{k: list(v) for k, v in e.items()}) for i, e in enumerate(eps)]
    minari.create_dataset_from_buffers("cdp-test/hopper/random-v0", bufs, env="Hopper-v5", eval_env="Hopper-v5",
                                       algorithm_name="random", ref_min_score=0.0, ref_max_score=1.0)
    return "cdp-test/hopper/random-v0"
