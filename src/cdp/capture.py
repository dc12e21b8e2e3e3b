"""CUDA graphs for training updates and action selection.

On a GPU a small network's update is hundreds of kernels of a few microseconds each, and the
GPU waits on the host to launch them. A CUDA graph records the kernels once and replays them
with one launch. What can be recorded: work with fixed shapes that never reads a value back to
the host. The library's hot paths follow two rules for that: value checks that read back
(``isfinite(x).all()``) are skipped while a graph is being recorded (:func:`capturing`), and
the contraction term's window is a mask over a fixed number of rows instead of a gather of the
rows inside it (same value: ``ContractionRegularizer.loss``).

An agent's update is split in three (``cdp.rl.agent.Agent``): ``prepare`` (host-side choices
for this step, written into device tensors), ``compute`` (the device work: losses, backward
passes, optimiser steps; recorded once by :class:`GraphedUpdate`) and ``advance`` (the step
counter, learning-rate schedule and target / EMA averages, a few launches on the host).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def capturing() -> bool:
    """Whether the work now running must keep fixed shapes and never read a value back to the
    host: the current CUDA stream is recording a graph, or a ``torch.func`` transform is tracing
    it (``vmap`` over stacked seeds, :mod:`cdp.rl.stacked`), where a host read is an error."""
    if torch._C._functorch.peek_interpreter_stack() is not None:  # inside vmap / grad / jvp
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def host_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """0-d metric tensors as floats, in one device-to-host read (one wait for the GPU per step
    instead of one per metric)."""
    if not metrics:
        return {}
    vals = torch.stack([v.detach().to(torch.float64) for v in metrics.values()]).tolist()
    return dict(zip(metrics, vals))


def graphs_available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device; on the CPU every update runs eagerly."""
    return device.type == "cuda" and torch.cuda.is_available()


def make_capturable(opt: torch.optim.Optimizer) -> None:
    """Let an Adam-family optimiser step inside a graph: its step counters live on the device
    and its learning rate is a device tensor that the schedule fills in place (a float would be
    frozen into the graph)."""
    for group in opt.param_groups:
        dev = group["params"][0].device
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=dev)
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st:
                st["step"] = st["step"].to(dev, torch.float32)


def portable_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` loadable by an eager optimiser on any device: ``capturable`` off and
    the learning rate a float (a checkpoint written under graphs resumes on the CPU)."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
    return sd


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate, in place when it is a device tensor (graph mode)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _side_stream_call(fn: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """CUDA's rule for what precedes a capture: run on a side stream (warm-up allocations and
    library handles then belong to no graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


class GraphedUpdate:
    """``agent.update`` with its device work recorded once and replayed.

    The first ``warmup`` calls run eagerly (real training steps, on a side stream: optimiser
    state and library workspaces get allocated); the next call records ``agent.compute`` on
    static copies of the batch and replays it; every later call copies its batch into those
    copies and replays. ``prepare`` and ``advance`` run on the host each call, as in the eager
    update. Returns the graph's output tensors (overwritten by the next call: read them first).
    """

    def __init__(self, agent, warmup: int = 3) -> None:
        if agent.device.type != "cuda":
            raise ValueError(f"CUDA graphs need an agent on a CUDA device, got {agent.device}")
        self.agent, self.warmup, self.calls = agent, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        for opt in agent.optimizers():
            make_capturable(opt)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        agent = self.agent
        agent.prepare()
        if self.graph is None and self.calls < self.warmup:
            out = _side_stream_call(lambda: agent.compute(batch))
        else:
            if self.graph is None:
                self._record(batch)
            else:
                for k, v in batch.items():
                    self.inputs[k].copy_(v, non_blocking=True)
            self.graph.replay()  # type: ignore[union-attr]
            out = self.outputs
        agent.advance()
        self.calls += 1
        return out

    def _record(self, batch: dict[str, Tensor]) -> None:
        self.inputs = {k: v.clone() for k, v in batch.items()}
        for opt in self.agent.optimizers():  # gradients are allocated inside the graph's memory
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        for generator in self.agent.generators():  # private generators: their draws advance on every replay too
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            self.outputs = self.agent.compute(self.inputs)
        self.graph = graph


class GraphedCall:
    """A no-grad function of one tensor (``agent.act``, a policy's chunk sampler), recorded once
    per input shape and replayed: ``fn(x)`` for a batch of the shape seen at recording returns
    the graph's output (a fresh copy, so later calls do not overwrite it). Random draws inside
    follow the device generator as in eager calls."""

    def __init__(self, fn: Callable[[Tensor], Tensor], warmup: int = 2,
                 generator: torch.Generator | None = None) -> None:
        self.fn, self.warmup, self.generator = fn, warmup, generator  # generator: a private one fn draws from
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self.seen: dict[tuple, int] = {}

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device)
        hit = self.graphs.get(key)
        if hit is None:
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
            if n < self.warmup:
                return _side_stream_call(lambda: {"y": self.fn(x)})["y"]
            static_in = x.clone()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            if self.generator is not None:
                graph.register_generator_state(self.generator)
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            hit = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = hit
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out.clone()
