"""resnets.layers: the chapter's blocks (ResBlock, its shortcut, the bottleneck), the stem, the 1x1 conv by einsum."""

import pytest
import torch
import torch.nn.functional as F
from fastai.layers import ConvLayer
from torch import nn

from resnets import (
    ResBlock,
    SimpleResBlock,
    avg_pool,
    basic_convs,
    bottleneck_convs,
    conv1x1_einsum,
    stem,
)


def _bns(m):
    return [l for l in m.modules() if isinstance(l, nn.BatchNorm2d)]


def _branch_bias(block):
    # fastai's BatchNorm starts its bias at 1e-3, so with gamma 0 a fresh branch outputs exactly that.
    bias = _bns(block.convs)[-1].bias
    assert torch.all(bias == 1e-3)
    return bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("bias", [False, True])
def test_conv1x1_einsum_matches_conv2d(bias):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 7, 5, requires_grad=True)
    w = torch.randn(8, 16, 1, 1, requires_grad=True)
    b = torch.randn(8, requires_grad=True) if bias else None
    ours, ref = conv1x1_einsum(x, w, b), F.conv2d(x, w, b)
    assert ours.shape == ref.shape == (3, 8, 7, 5)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    inputs = [x, w] + ([b] if bias else [])
    grads_ours = torch.autograd.grad(ours, inputs, g)
    grads_ref = torch.autograd.grad(ref, inputs, g)
    for a, r in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, r)


def test_conv1x1_einsum_bad_shapes():
    with pytest.raises(ValueError, match=r"weight must have shape \(nf, ni, 1, 1\)"):
        conv1x1_einsum(torch.randn(1, 4, 3, 3), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(bs, 4, h, w\)"):
        conv1x1_einsum(torch.randn(1, 5, 3, 3), torch.randn(2, 4, 1, 1))


def test_avg_pool_is_adaptive_avg_pool_flattened():
    x = torch.randn(2, 5, 7, 3)
    assert avg_pool(x).shape == (2, 5)
    torch.testing.assert_close(avg_pool(x), nn.AdaptiveAvgPool2d(1)(x).flatten(1))


@pytest.mark.parametrize("train", [True, False])
def test_fresh_simple_resblock_is_identity(train):
    block = SimpleResBlock(8, 8).train(train)
    x = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(block(x), x + _branch_bias(block))


@pytest.mark.parametrize("ni,nf,stride", [(8, 16, 1), (8, 8, 2), (8, 16, 2)])
def test_simple_resblock_misuse_says_why(ni, nf, stride):
    with pytest.raises(ValueError, match=r"stride=1 and ni == nf.*Use ResBlock"):
        SimpleResBlock(ni, nf, stride)


def test_simple_resblock_learns_away_from_identity():
    # gamma 0 is where it starts, not a constant: one step must change the output.
    block = SimpleResBlock(4, 4)
    x = torch.randn(8, 4, 5, 5)
    before = block(x).detach()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    (block(x) - torch.randn_like(x)).pow(2).mean().backward()
    opt.step()
    assert _bns(block.convs)[-1].weight.abs().sum() > 0, "gamma moved away from zero"
    assert (block(x) - before).abs().max() > 1e-3


@pytest.mark.parametrize("conv_path,ni,nf,stride,hw", [
    ("basic", 16, 16, 1, 8), ("basic", 16, 32, 2, 8), ("basic", 16, 32, 2, 7),
    ("bottleneck", 64, 256, 1, 8), ("bottleneck", 256, 512, 2, 9),
])
def test_resblock_shapes(conv_path, ni, nf, stride, hw):
    out = ResBlock(ni, nf, stride, conv_path=conv_path)(torch.randn(2, ni, hw, hw))
    expect = -(-hw // stride)  # ceil: padding on the conv path, ceil_mode on the shortcut pool
    assert out.shape == (2, nf, expect, expect)
    assert (out >= 0).all(), "a ResBlock ends with a ReLU after the sum"


def test_resblock_shortcut_structure():
    same = ResBlock(16, 16, 1)
    assert isinstance(same.idconv, nn.Identity) and isinstance(same.pool, nn.Identity)
    down = ResBlock(16, 32, 2)
    assert isinstance(down.pool, nn.AvgPool2d) and down.pool.kernel_size == 2 and down.pool.ceil_mode
    assert isinstance(down.idconv, ConvLayer)
    conv = down.idconv[0]
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.bias is None
    assert not any(isinstance(l, nn.ReLU) for l in down.idconv), "idconv has no activation"


def test_fresh_resblock_outputs_relu_of_shortcut():
    block = ResBlock(8, 8)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(x + _branch_bias(block)))


@pytest.mark.parametrize("make", [basic_convs, bottleneck_convs])
@pytest.mark.parametrize("zero_gamma", [True, False])
def test_last_batchnorm_of_branch_starts_at_zero(make, zero_gamma):
    branch = make(16, 32, stride=2, zero_gamma=zero_gamma)
    *first, last = _bns(branch)
    assert torch.all(last.weight == (0.0 if zero_gamma else 1.0))
    assert all(torch.all(bn.weight == 1.0) for bn in first)
    assert not isinstance(list(branch[-1].children())[-1], nn.ReLU), "no activation after the last BatchNorm"


def test_bottleneck_shape_of_branch():
    convs = [l[0] for l in bottleneck_convs(256, 512, stride=2)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (1, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128), (128, 128), (128, 512)]


def test_stem_has_the_chapters_layers():
    layers = stem(3, 32, 32, 64)
    assert len(layers) == 4
    convs = [l[0] for l in layers[:3]]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    for l in layers[:3]:
        assert [type(m) for m in l] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    pool = layers[3]
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert convs[0].weight.numel() == 864  # the chapter's count for the first conv


def test_bad_block_arguments():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ResBlock(8, 8, stride=3)
    with pytest.raises(ValueError, match="unknown conv_path"):
        ResBlock(8, 8, conv_path="wide")
    with pytest.raises(ValueError, match="nf >= 4"):
        bottleneck_convs(8, 2)
