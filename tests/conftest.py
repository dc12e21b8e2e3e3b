import pytest
import torch


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
