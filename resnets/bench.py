"""Benchmarks (not tests): medians over repeats, each compared with a baseline measured in the same process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .layers import conv1x1_einsum
from .models import create_model

__all__ = ["median_seconds", "bench_conv1x1", "count_flops", "bench_models"]

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


def count_flops(model: torch.nn.Module, size: int, c_in: int = 3) -> int:
    "Forward FLOPs for one image, counted by torch's FlopCounterMode (a multiply-add counts as 2)."
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c_in, size, size))
    model.train(was_training)
    return counter.get_total_flops()


def _train_step(model, opt, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()  # time the work, not its launch


def bench_models(names, size: int = 128, bs: int = 32, repeats: int = 5, device: str = "cpu") -> list[dict]:
    "Parameters, counted forward FLOPs per image, and training-step throughput on synthetic tensors."
    rows = []
    for name in names:
        model = create_model(name, n_out=10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(bs, 3, size, size, device=device)
        y = torch.randint(0, 10, (bs,), device=device)
        seconds = median_seconds(partial(_train_step, model, opt, x, y), repeats=repeats, warmup=2)
        rows.append({"model": name, "size": size, "params": sum(p.numel() for p in model.parameters()),
                     "gflops_per_image": count_flops(model, size) / 1e9,
                     "train_images_per_s": bs / seconds})  # fmt: skip
    return rows
