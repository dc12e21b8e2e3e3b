"""cdp.runtime.tune_allocator: freed tensor memory is reused instead of re-faulted from the OS."""

import subprocess
import sys

import pytest

from cdp.runtime import tune_allocator

# A sampling-like loop of 1 MB activations; prints the minor page faults of its last 20 rounds.
_PROBE = """
import resource, sys, torch
from cdp.runtime import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
torch.set_num_threads(1)
x, w = torch.randn(1000, 256), torch.randn(256, 256)
def work():
    h = x
    for _ in range(3):
        e = (h @ w).clamp(max=20.0)
        h = torch.tanh(torch.nn.functional.softplus(e)) * e
for _ in range(3):
    work()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    work()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_stops_refaulting_freed_tensors():
    if not tune_allocator():
        pytest.skip("not glibc")
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 1000  # each round maps fresh pages for its 1 MB temporaries
    assert tuned < default / 4
