"""The chapter's building blocks: pooling, residual blocks, conv paths and the stem.

Vocabulary (used across the package):
  ni, nf     channels into and out of a layer or block ("number of inputs / filters")
  stride     2 halves the grid size, 1 keeps it
A bottleneck branch works at a quarter of its output width (nf//4).

Every convolution is fastai's `ConvLayer` (conv -> BatchNorm -> ReLU, padding ks//2, no conv bias
before a BatchNorm); `NormType.BatchZero` starts a BatchNorm's weight (gamma) at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from fastai.layers import ConvLayer, NormType
from torch import Tensor, nn

from .errors import InputError

__all__ = [
    "avg_pool",
    "conv1x1_einsum",
    "SimpleResBlock",
    "ResBlock",
    "basic_convs",
    "bottleneck_convs",
    "CONV_PATHS",
    "stem",
]


def avg_pool(x: Tensor) -> Tensor:
    "Mean over the two spatial axes: (bs, c, h, w) -> (bs, c); `nn.AdaptiveAvgPool2d(1)` + flatten."
    return x.mean((2, 3))


def conv1x1_einsum(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    "A 1x1 convolution as a matrix product over channels: (bs, ni, h, w) x (nf, ni, 1, 1) -> (bs, nf, h, w)."
    if weight.dim() != 4 or weight.shape[2:] != (1, 1):
        raise InputError(f"weight must have shape (nf, ni, 1, 1), got {tuple(weight.shape)}")
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise InputError(f"x must have shape (bs, {weight.shape[1]}, h, w) to match the weight, got {tuple(x.shape)}")
    out = torch.einsum("bihw,oi->bohw", x, weight[:, :, 0, 0])
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _last_norm(zero_gamma: bool) -> NormType:
    # Zero gamma makes a fresh residual branch output 0, so each block starts as the identity (or its
    # shortcut): "Accurate, Large Minibatch SGD", Goyal et al. 2017, arXiv:1706.02677, section 5.1.
    return NormType.BatchZero if zero_gamma else NormType.Batch


def basic_convs(ni: int, nf: int, stride: int = 1, zero_gamma: bool = True) -> nn.Sequential:
    "The basic residual branch: two 3x3 ConvLayers, the last with no activation and (by default) gamma 0."
    return nn.Sequential(
        ConvLayer(ni, nf, stride=stride),
        ConvLayer(nf, nf, act_cls=None, norm_type=_last_norm(zero_gamma)),
    )


def bottleneck_convs(ni: int, nf: int, stride: int = 1, zero_gamma: bool = True) -> nn.Sequential:
    "The bottleneck branch: 1x1 squeeze to nf//4, 3x3 (carrying the stride), 1x1 expand back to nf."
    nh = nf // 4
    if nh < 1:
        raise InputError(f"a bottleneck block needs nf >= 4 (its inner width is nf//4), got nf={nf}")
    return nn.Sequential(
        ConvLayer(ni, nh, ks=1),
        ConvLayer(nh, nh, stride=stride),
        ConvLayer(nh, nf, ks=1, act_cls=None, norm_type=_last_norm(zero_gamma)),
    )


CONV_PATHS: dict[str, Callable[..., nn.Module]] = {"basic": basic_convs, "bottleneck": bottleneck_convs}


class SimpleResBlock(nn.Module):
    "The chapter's first residual block, `x + convs(x)`: only defined for stride 1 and ni == nf."

    def __init__(self, ni: int, nf: int, stride: int = 1, zero_gamma: bool = True):
        super().__init__()
        if stride != 1 or ni != nf:
            raise InputError(
                f"SimpleResBlock(ni={ni}, nf={nf}, stride={stride}) cannot add x to convs(x): that needs "
                "stride=1 and ni == nf so both have the same shape. Use ResBlock, whose 1x1 idconv and "
                "average-pool shortcut handle a change of width or grid size."
            )
        self.convs = basic_convs(ni, nf, zero_gamma=zero_gamma)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.convs(x)


class ResBlock(nn.Module):
    "`relu(convs(x) + idconv(pool(x)))`, with a ResNet-D shortcut: average-pool then 1x1 conv when needed."

    def __init__(
        self, ni: int, nf: int, stride: int = 1, conv_path: str = "basic", zero_gamma: bool = True
    ):
        super().__init__()
        if stride not in (1, 2):
            raise InputError(f"ResBlock stride must be 1 or 2, got {stride}")
        if conv_path not in CONV_PATHS:
            raise InputError(f"unknown conv_path {conv_path!r}: choose one of {sorted(CONV_PATHS)}")
        self.convs = CONV_PATHS[conv_path](ni, nf, stride=stride, zero_gamma=zero_gamma)
        self.idconv = nn.Identity() if ni == nf else ConvLayer(ni, nf, ks=1, act_cls=None)
        # Average-pooling the shortcut (instead of a stride-2 1x1 conv that drops 3/4 of the
        # activations) is the ResNet-D tweak of "Bag of Tricks", He et al. 2018, arXiv:1812.01187.
        self.pool = nn.Identity() if stride == 1 else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.convs(x) + self.idconv(self.pool(x)))


def stem(*sizes: int, pool: bool = True) -> list[nn.Module]:
    "The bag-of-tricks stem, `stem(3, 32, 32, 64)`: 3x3 ConvLayers (the first stride 2), then (`pool`) a max-pool."
    if len(sizes) < 2:
        raise InputError(f"stem needs at least an input and an output width, got {sizes}")
    convs = [ConvLayer(ni, nf, stride=2 if i == 0 else 1) for i, (ni, nf) in enumerate(zip(sizes, sizes[1:]))]
    return [*convs, nn.MaxPool2d(kernel_size=3, stride=2, padding=1)] if pool else convs

