"""Benchmarks (not tests): medians over repeats, each compared with a baseline measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .layers import conv1x1_einsum

__all__ = ["median_seconds", "bench_conv1x1"]

# (batch, ni, nf, grid): a ResNet-50 bottleneck's 1x1 convs at 128 px input, stage 1 and stage 4
CONV1X1_SHAPES = ((32, 256, 64, 32), (32, 64, 256, 32), (32, 2048, 512, 4), (32, 512, 2048, 4))


def median_seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    "Median wall time of `fn()` over `repeats` calls, after `warmup` untimed ones."
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def bench_conv1x1(shapes=CONV1X1_SHAPES, repeats: int = 20, device: str = "cpu") -> list[dict]:
    "Forward time of `conv1x1_einsum` against `F.conv2d` on the same tensors, with the largest difference."
    rows = []
    for bs, ni, nf, grid in shapes:
        x = torch.randn(bs, ni, grid, grid, device=device)
        w = torch.randn(nf, ni, 1, 1, device=device)
        t_conv = median_seconds(partial(F.conv2d, x, w), repeats)
        t_einsum = median_seconds(partial(conv1x1_einsum, x, w), repeats)
        diff = (conv1x1_einsum(x, w) - F.conv2d(x, w)).abs().max().item()
        rows.append({"shape": f"{bs}x{ni}x{grid}x{grid} -> {nf}", "conv2d_ms": 1e3 * t_conv,
                     "einsum_ms": 1e3 * t_einsum, "einsum_over_conv2d": t_einsum / t_conv,
                     "max_abs_diff": diff})  # fmt: skip
    return rows
