#!/usr/bin/env bash
# The GPU checks in one go: the CUDA tests, then the update, imitation-step and action-selection
# benchmarks on cuda, each log written to $1 (default ./gpu_logs). Run from the repository root
# with cdp importable (pip install -e . or PYTHONPATH=src) on a machine with a CUDA GPU. The steps'
# limits add up to 550 s, inside one device call's 600 s.
set -uo pipefail
out=${1:-gpu_logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
  python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"; } 2>&1 | tee "$out/env.txt"
timeout 120 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_cuda.py tests/test_capture.py 2>&1 | tee "$out/tests.txt"
(cd benchmarks && timeout 80 python3 edp_step.py --quick --device cuda) 2>&1 | tee "$out/edp_step.txt"
(cd benchmarks && timeout 50 python3 action_selection.py --quick --device cuda) 2>&1 | tee "$out/action_selection.txt"
(cd benchmarks && timeout 100 python3 il_step.py --quick --device cuda) 2>&1 | tee "$out/il_step.txt"
(cd benchmarks && timeout 120 python3 any_network.py --quick --only il --device cuda) 2>&1 | tee "$out/any_network.txt"
(cd benchmarks && timeout 80 python3 ensemble.py --seeds 10 --steps 30 --device cuda) 2>&1 | tee "$out/ensemble.txt"
