"""The chapter's models: the fully convolutional CNN with a pluggable block, and ResNet-18 ... 152.

  layers     blocks per stage, e.g. [2,2,2,2] for ResNet-18
  expansion  multiplier of the stage widths 64, 128, 256, 512 (4 in ResNet-50+, whose bottleneck
             blocks work inside at a quarter of that width, so at the plain widths again)
  n_out      number of classes; c_in: number of input channels (3 for RGB)

Every model but `mnist_flat` is fully convolutional up to an adaptive average pool, so one trained at one image
size runs at any other (>= 32 px keeps every stage's grid at least 1x1). `mnist_flat` flattens its last grid and
takes 28 px images only (its `input_size`). `count_flops` counts a model's forward FLOPs at a size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
from fastai.layers import ConvLayer, Flatten
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .config import MODEL_NAMES, RESNETS
from .errors import InputError, check_number
from .layers import ResBlock, stem

__all__ = [
    "cnn_block",
    "ChapterCNN",
    "ResNet",
    "DepthNet",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "MODELS",
    "create_model",
    "list_models",
    "count_flops",
    "weights_mismatch",
]


def _check_positive(**kw: int) -> None:
    for k, v in kw.items():
        check_number(k, v)


# What replaces each stride-2 step of the chapter's first CNN (experiments 1, 2 and 3).
CNN_BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "conv": lambda ni, nf, zero_gamma: ConvLayer(ni, nf, stride=2),
    "res": lambda ni, nf, zero_gamma: ResBlock(ni, nf, stride=2, zero_gamma=zero_gamma),
    "double_res": lambda ni, nf, zero_gamma: nn.Sequential(
        ResBlock(ni, nf, stride=2, zero_gamma=zero_gamma), ResBlock(nf, nf, zero_gamma=zero_gamma)),
}


def cnn_block(kind: str, ni: int, nf: int, zero_gamma: bool = True) -> nn.Module:
    "One stride-2 step of the chapter's CNN: a ConvLayer, a ResBlock, or a ResBlock then a stride-1 one."
    if kind not in CNN_BLOCKS:
        raise InputError(f"unknown block {kind!r}: choose one of {sorted(CNN_BLOCKS)}")
    return CNN_BLOCKS[kind](ni, nf, zero_gamma)


class _Sequential(nn.Sequential):
    "An nn.Sequential that checks its input's shape, and whose slices are plain nn.Sequentials."

    input_size: int | None = None  # set by models that take one image size only

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self.c_in = next(m for m in self.modules() if isinstance(m, nn.Conv2d)).in_channels

    def __getitem__(self, idx):
        # torch rebuilds slices with the subclass's __init__, which takes other arguments
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.c_in:
            raise InputError(f"expected a batch of images shaped (batch, {self.c_in}, height, width), "
                             f"got a tensor shaped {tuple(x.shape)}")
        if self.input_size is not None and x.shape[2:] != (self.input_size, self.input_size):
            raise InputError(f"this model flattens its last grid, so it takes {self.input_size}x{self.input_size} "
                             f"images only, got {x.shape[2]}x{x.shape[3]}")
        return super().forward(x)


class ChapterCNN(_Sequential):
    "Stride-2 blocks 3->16->32->64->128->256, then AdaptiveAvgPool2d(1), Flatten, Linear(256, n_out)."

    def __init__(
        self,
        n_out: int = 10,
        block: str = "conv",
        c_in: int = 3,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        pool: bool = True,
        input_size: int | None = None,
        zero_gamma: bool = True,
    ):
        "`pool=False` flattens the last grid instead of averaging it: then only `input_size` images fit."
        _check_positive(n_out=n_out, c_in=c_in)
        szs = [c_in, *widths]
        if pool:
            head = [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(szs[-1], n_out)]
        else:
            _check_positive(input_size=input_size)
            grid = input_size
            for _ in widths:
                grid = (grid + 1) // 2  # a stride-2, padding-1 3x3 conv
            head = [Flatten(), nn.Linear(szs[-1] * grid * grid, n_out)]
        super().__init__(*[cnn_block(block, ni, nf, zero_gamma) for ni, nf in zip(szs, szs[1:])], *head)
        self.input_size = None if pool else input_size


class ResNet(_Sequential):
    "Stem, up to four stages of residual blocks (widths 64e, 128e, 256e, 512e by default), pool, flatten, linear."

    def __init__(
        self,
        n_out: int,
        layers: list[int],
        expansion: int = 1,
        c_in: int = 3,
        conv_path: str | None = None,
        zero_gamma: bool = True,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem_widths: tuple[int, ...] = (32, 32, 64),
        stem_pool: bool = True,
    ):
        """`widths`: each stage's width (times `expansion`); `stem_widths`: the stem's 3x3 convs (the first with
        stride 2), followed by a stride-2 max-pool unless `stem_pool=False` (which keeps 4x the grid, for small
        images)."""
        _check_positive(n_out=n_out, expansion=expansion, c_in=c_in)
        if not isinstance(layers, list | tuple) or not 1 <= len(layers) <= 4:
            raise InputError(f"layers must be a list of 1 to 4 positive ints (blocks per stage), got {layers!r}")
        for n in layers:
            _check_positive(**{"each entry of layers": n})
        for w in (*widths, *stem_widths):
            _check_positive(**{"each width": w})
        if len(widths) < len(layers):
            raise InputError(f"widths needs one width per stage: {len(layers)} stages, widths {tuple(widths)}")
        conv_path = conv_path or ("basic" if expansion == 1 else "bottleneck")
        self.block_szs = [stem_widths[-1]] + [w * expansion for w in widths][: len(layers)]
        stages = [
            self._make_stage(ni, nf, n_blocks, stride=1 if i == 0 else 2, conv_path=conv_path, zero_gamma=zero_gamma)
            for i, (ni, nf, n_blocks) in enumerate(zip(self.block_szs, self.block_szs[1:], layers))
        ]
        super().__init__(
            *stem(c_in, *stem_widths, pool=stem_pool),
            *stages,
            nn.AdaptiveAvgPool2d(1),
            Flatten(),
            nn.Linear(self.block_szs[-1], n_out),
        )

    @staticmethod
    def _make_stage(ni: int, nf: int, n_blocks: int, stride: int, **kw) -> nn.Sequential:
        # Only the first block of a stage changes width and grid size; the rest keep nf channels.
        blocks = [ResBlock(ni if i == 0 else nf, nf, stride if i == 0 else 1, **kw) for i in range(n_blocks)]
        return nn.Sequential(*blocks)


class DepthNet(_Sequential):
    "He et al.'s CIFAR nets (2015, section 4.2): a 3x3 ConvLayer, 3 stages of n two-conv blocks, pool, linear."

    def __init__(self, n_out=10, n: int = 3, residual: bool = True, width: int = 16, c_in=3, zero_gamma: bool = True):
        "6n+2 weight layers; stages of width w, 2w, 4w, the 2nd and 3rd starting with a stride-2 block."
        _check_positive(n_out=n_out, n=n, width=width, c_in=c_in)
        widths = [width] * (n + 1) + [2 * width] * n + [4 * width] * n  # into and out of each block
        strides = [1] * n + [2] + [1] * (n - 1) + [2] + [1] * (n - 1)
        if residual:
            blocks = [ResBlock(ni, nf, s, zero_gamma=zero_gamma) for ni, nf, s in zip(widths, widths[1:], strides)]
        else:  # the same convolutions with no shortcut: a "plain" net
            blocks = [nn.Sequential(ConvLayer(ni, nf, stride=s), ConvLayer(nf, nf))
                      for ni, nf, s in zip(widths, widths[1:], strides)]
        head = [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(4 * width, n_out)]
        super().__init__(ConvLayer(c_in, width), *blocks, *head)


def _depth_net(n: int, residual: bool, n_out: int = 10, c_in: int = 3, zero_gamma: bool = True) -> DepthNet:
    return DepthNet(n_out, n, residual, c_in=c_in, zero_gamma=zero_gamma)


def _scaled(widths: tuple[int, ...], width: float) -> tuple[int, ...]:
    return tuple(max(1, round(w * width)) for w in widths)


STEM = (32, 32, 64)  # the chapter's stem: three 3x3 convs, the first with stride 2


def _resnet(layers, expansion, n_out=10, width: float = 1.0, stem: tuple[int, ...] = STEM, **kw) -> ResNet:
    "A ResNet with the chapter's widths (stages 64 ... 512; `stem` 32, 32, 64 unless given) times `width`."
    check_number("width", width, kind=(int, float), low=0, strict=True)
    return ResNet(n_out, layers, expansion, widths=_scaled((64, 128, 256, 512), width),
                  stem_widths=_scaled(tuple(stem) or STEM, width), **kw)


def resnet10(n_out: int = 10, **kw) -> ResNet:  return _resnet([1, 1, 1, 1], 1, n_out, **kw)   # noqa: E704
def resnet18(n_out: int = 10, **kw) -> ResNet:  return _resnet([2, 2, 2, 2], 1, n_out, **kw)   # noqa: E704
def resnet34(n_out: int = 10, **kw) -> ResNet:  return _resnet([3, 4, 6, 3], 1, n_out, **kw)   # noqa: E704
def resnet50(n_out: int = 10, **kw) -> ResNet:  return _resnet([3, 4, 6, 3], 4, n_out, **kw)   # noqa: E704
def resnet101(n_out: int = 10, **kw) -> ResNet: return _resnet([3, 4, 23, 3], 4, n_out, **kw)  # noqa: E704
def resnet152(n_out: int = 10, **kw) -> ResNet: return _resnet([3, 8, 36, 3], 4, n_out, **kw)  # noqa: E704


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn":            partial(ChapterCNN, block="conv"),
    "res_cnn":        partial(ChapterCNN, block="res"),
    "double_res_cnn": partial(ChapterCNN, block="double_res"),
    "resnet10":       resnet10,
    "resnet18":       resnet18,
    "resnet34":       resnet34,
    "resnet50":       resnet50,
    "resnet101":      resnet101,
    "resnet152":      resnet152,
    # Exercise 1, MNIST (28 px): averaging lets 3 stride-2 convs (28->14->7->4) suffice; without the
    # pool, the last grid is flattened, so the net needs 5 to reach 1x1 (and accepts only 28 px).
    "mnist_pool":     partial(ChapterCNN, widths=(16, 32, 64)),
    "mnist_flat":     partial(ChapterCNN, widths=(8, 16, 32, 64, 64), pool=False, input_size=28),
    # The degradation claim (He et al. 2015, figure 1 / 6): 6n+2 layers, with and without shortcuts.
    "plain20":        partial(_depth_net, 3, False),
    "plain56":        partial(_depth_net, 9, False),
    "res20":          partial(_depth_net, 3, True),
    "res56":          partial(_depth_net, 9, True),
}


assert tuple(MODELS) == MODEL_NAMES, "config.MODEL_NAMES names these, for checks without torch"


def list_models() -> list[str]:
    "Names accepted by `create_model`."
    return list(MODELS)


def create_model(name: str, n_out: int = 10, c_in: int = 3, width: float = 1.0, stem: tuple[int, ...] = (),
                 **kw) -> nn.Module:
    """Build a registered model by name, e.g. `create_model('resnet18', n_out=10)`; `width` scales a ResNet's widths,
    `stem` sets its stem's conv widths (before `width`; default the chapter's 32, 32, 64)."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    for k, v, off in (("width", width, 1), ("stem", tuple(stem or ()), ())):
        if v != off:
            if name not in RESNETS:
                raise InputError(f"{k} is a setting of the ResNets only ({', '.join(RESNETS)}), not {name!r}: "
                                 "leave it out")
            kw[k] = v
    return MODELS[name](n_out=n_out, c_in=c_in, **kw)


def weights_mismatch(ours: dict, theirs: dict, dtypes: bool = True) -> str | None:
    """What keeps the weights `theirs` (a state dict) from loading into a network whose state dict is `ours` (one
    built on torch's "meta" device will do: shapes and dtypes, no memory): names missing or unexpected, a shape or
    (with `dtypes`) a dtype that differs; None when they fit."""
    if theirs.keys() != ours.keys():
        extra, missing = sorted(theirs.keys() - ours.keys()), sorted(ours.keys() - theirs.keys())
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for name, w in ours.items():
        t = theirs[name]
        if not isinstance(t, torch.Tensor) or t.shape != w.shape or (dtypes and t.dtype != w.dtype):
            what = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            return f"{name} is {what}, the network's {w.dtype} {tuple(w.shape)}"
    return None


def count_flops(model: nn.Module, size: int, c_in: int = 3) -> int:
    "Forward FLOPs for one image, counted by torch's FlopCounterMode (a multiply-add counts as 2)."
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c_in, size, size))
    model.train(was_training)
    return counter.get_total_flops()
