"""Timing, the one way the library and its scripts measure: a leaf module that imports only torch.

`median_seconds(fn)` is the median wall time of calls (after untimed warm-up ones), synchronising a GPU so the
work is timed, not its launch; `step_stages` splits training steps into waiting for the batch, forward, backward
and the optimiser's step. Benchmarks (resnets.bench, scripts/), the budget planner (resnets.budget) and the
studies' throughput all use these two.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["sync", "median_seconds", "step_stages"]


def sync() -> None:
    "Wait for the GPU's queued work (nothing to wait for on a CPU)."
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    "Median wall time of `fn()` over `repeats` calls, after `warmup` untimed ones."
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_stages(model, opt, loss_func, dl, batches: int, warmup: int = 1, cast=None) -> tuple[dict, int]:
    """Seconds spent per stage of `batches` training steps, after `warmup` untimed ones: waiting for the batch
    (loading and augmentation), forward + loss, backward, optimiser step; and the images timed. The GPU is
    synchronised between stages so each is charged its own time. `cast`: a context manager factory (autocast)."""
    model.train()
    stages, it, n = dict.fromkeys(("data", "forward", "backward", "step"), 0.0), iter(dl), 0
    for i in range(warmup + batches):
        t0 = time.perf_counter()
        xb, yb = (t.as_subclass(torch.Tensor) for t in next(it))  # fastai's tensor types, as plain tensors
        sync()
        t1 = time.perf_counter()
        with (cast or contextlib.nullcontext)():
            loss = loss_func(model(xb).float(), yb)
        sync()
        t2 = time.perf_counter()
        loss.backward()
        sync()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        sync()
        t4 = time.perf_counter()
        if i >= warmup:
            n += len(xb)
            for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[k] += dt
    del it
    return stages, n
