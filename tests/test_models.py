"""resnets.models: every model's size, shapes and structure against fastai's xresnet, and any config either
runs or is refused with a clear error (hypothesis)."""

import pytest
import torch
from fastai.vision.models.xresnet import xresnet18, xresnet34, xresnet50, xresnet101, xresnet152
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from resnets import MODELS, ChapterCNN, DepthNet, InputError, ResBlock, ResNet, create_model, list_models, run


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- independent parameter counts, from the spec's description rather than from our modules ---
def conv_bn(ni, nf, ks=3):  # ConvLayer: conv without bias, then BatchNorm (weight + bias)
    return ni * nf * ks * ks + 2 * nf


def expected_resnet(layers, expansion, n_out=10, c_in=3, width=1):
    s1, s2, s3 = (round(w * width) for w in (32, 32, 64))
    total = conv_bn(c_in, s1) + conv_bn(s1, s2) + conv_bn(s2, s3)
    szs = [s3] + [round(w * width) * expansion for w in (64, 128, 256, 512)]
    for stage, n in enumerate(layers):
        for i in range(n):
            ni, nf = (szs[stage] if i == 0 else szs[stage + 1]), szs[stage + 1]
            if expansion == 1:
                total += conv_bn(ni, nf) + conv_bn(nf, nf)
            else:
                nh = nf // 4
                total += conv_bn(ni, nh, 1) + conv_bn(nh, nh) + conv_bn(nh, nf, 1)
            if ni != nf:
                total += conv_bn(ni, nf, 1)
    return total + szs[-1] * n_out + n_out


def expected_cnn(block, n_out=10):
    szs, total = [3, 16, 32, 64, 128, 256], 0
    for ni, nf in zip(szs, szs[1:]):
        res = conv_bn(ni, nf) + conv_bn(nf, nf) + conv_bn(ni, nf, 1)
        total += {"conv": conv_bn(ni, nf), "res": res, "double_res": res + 2 * conv_bn(nf, nf)}[block]
    return total + 256 * n_out + n_out


def expected_plain(widths, grid=1, n_out=10):  # stride-2 ConvLayers, then a linear layer on grid x grid cells
    szs = [3, *widths]
    return sum(conv_bn(ni, nf) for ni, nf in zip(szs, szs[1:])) + widths[-1] * grid * grid * n_out + n_out


def expected_depth_net(n, residual, width=16, n_out=10):  # He et al.'s 6n+2-layer CIFAR nets
    total, szs = conv_bn(3, width), [width] * (n + 1) + [2 * width] * n + [4 * width] * n
    for ni, nf in zip(szs, szs[1:]):
        total += conv_bn(ni, nf) + conv_bn(nf, nf) + (conv_bn(ni, nf, 1) if residual and ni != nf else 0)
    return total + 4 * width * n_out + n_out


PLAIN = {"cnn", "mnist_pool", "mnist_flat", "plain20", "plain56"}  # no residual blocks
ONE_SIZE = {"mnist_flat": 28}  # flattens its last grid, so it takes one input size only
EXPECTED = {
    "cnn": expected_cnn("conv"), "res_cnn": expected_cnn("res"), "double_res_cnn": expected_cnn("double_res"),
    "resnet10": expected_resnet([1, 1, 1, 1], 1),
    "resnet18": expected_resnet([2, 2, 2, 2], 1), "resnet34": expected_resnet([3, 4, 6, 3], 1),
    "resnet50": expected_resnet([3, 4, 6, 3], 4), "resnet101": expected_resnet([3, 4, 23, 3], 4),
    "resnet152": expected_resnet([3, 8, 36, 3], 4),
    "mnist_pool": expected_plain([16, 32, 64]), "mnist_flat": expected_plain([8, 16, 32, 64, 64]),
    "plain20": expected_depth_net(3, False), "plain56": expected_depth_net(9, False),
    "res20": expected_depth_net(3, True), "res56": expected_depth_net(9, True),
}


FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(-2, 5), st.text(max_size=3))
layers_like = st.one_of(st.lists(st.integers(-1, 2), max_size=5), st.lists(anything, max_size=3), anything)


def _forward_or_input_error(build, c_in, n_out, h, w):
    try:
        model = build()
    except InputError:
        return "rejected"
    with torch.no_grad():
        out = model.eval()(torch.randn(2, c_in, h, w))
    assert out.shape == (2, n_out) and torch.isfinite(out).all()
    return "ran"


def test_mnist_models_with_and_without_the_pool():
    pooled, flat = create_model("mnist_pool", n_out=2), create_model("mnist_flat", n_out=2)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (pooled, flat)]
    assert n_params[0] < n_params[1]
    strides = [sum(isinstance(l, torch.nn.Conv2d) and l.stride == (2, 2) for l in m.modules()) for m in (pooled, flat)]
    assert strides == [3, 5], "the pool lets 3 stride-2 convs do what takes 5 without it"
    for size in (28, 56):
        assert pooled(torch.randn(2, 3, size, size)).shape == (2, 2)
    assert flat(torch.randn(2, 3, 28, 28)).shape == (2, 2)
    with pytest.raises(InputError, match="28x28 images only"):  # flattening ties it to one input size
        flat(torch.randn(2, 3, 56, 56))


def test_a_size_the_model_cannot_take_is_a_clear_error(mnist_tiny):
    with pytest.raises(ValueError, match=r"'mnist_flat' cannot take 64 px images .*use its experiment's size, 28 px"):
        run("mnist_flat", data=mnist_tiny, size=64, presize=64, save=False, progress=False, num_workers=0)


@pytest.mark.parametrize("zero_gamma", [True, False])
def test_zero_gamma_ablation_flag_reaches_every_residual_branch(zero_gamma):
    for name in ("res_cnn", "double_res_cnn", "resnet18", "resnet50"):
        m = create_model(name, zero_gamma=zero_gamma)
        lasts = [[b for b in blk.convs.modules() if isinstance(b, torch.nn.BatchNorm2d)][-1]
                 for blk in m.modules() if hasattr(blk, "convs")]
        assert lasts and all(torch.all(bn.weight == (0.0 if zero_gamma else 1.0)) for bn in lasts)


def test_counted_flops_match_a_hand_count():
    from resnets.models import count_flops

    # one 3x3 conv 3->8 at 16x16 (stride 1, no bias) + BatchNorm/ReLU (not matmuls) -> 2 * 9*3*8 * 16*16
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU())
    assert count_flops(m, 16) == 2 * 9 * 3 * 8 * 16 * 16
    r18, r50 = count_flops(create_model("resnet18"), 128), count_flops(create_model("resnet50"), 128)
    # torchvision's ResNet-18 is 1.8 GMACs at 224 px; the deep 3-conv stem adds ~0.35 GMACs; x (128/224)^2
    assert 1.2e9 < r18 < 1.5e9 and r18 < r50


def test_registry_is_what_we_test():
    assert set(list_models()) == set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    assert n_params(create_model(name, n_out=10)) == EXPECTED[name]


@pytest.mark.parametrize("ours,fastais", [
    ("resnet18", xresnet18), ("resnet34", xresnet34), ("resnet50", xresnet50),
    ("resnet101", xresnet101), ("resnet152", xresnet152),
])
def test_same_size_as_fastais_xresnet(ours, fastais):
    # fastai's XResNet is the same bag-of-tricks architecture built by other code: a second witness.
    assert n_params(create_model(ours, n_out=10)) == n_params(fastais(n_out=10))


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, n_out=7)
    sizes = [(ONE_SIZE[name],) * 2] if name in ONE_SIZE else [(32, 32), (64, 64), (97, 97), (48, 40)]
    for h, w in sizes:  # fully convolutional: any size >= 32, odd and non-square ones included
        out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    h, w = sizes[-1]
    model.zero_grad()
    model(torch.randn(2, 3, h, w)).logsumexp(1).mean().backward()
    params = list(model.parameters())
    assert sum(p.grad is not None for p in params) == len(params), "every parameter gets a gradient"
    assert all(torch.isfinite(p.grad).all() for p in params)
    # with every gamma at 1 (none blocking the signal) every gradient is also non-zero
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    model.zero_grad()
    model(torch.randn(2, 3, h, w)).logsumexp(1).mean().backward()
    assert [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("name", list_models())
def test_last_batchnorm_of_every_residual_branch_is_zero(name):
    blocks = [m for m in create_model(name).modules() if isinstance(m, ResBlock)]
    assert (len(blocks) > 0) == (name not in PLAIN)
    for b in blocks:
        last = [m for m in b.convs.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        assert torch.all(last.weight == 0)


def test_resnet_structure():
    m = create_model("resnet50")
    stages = [m[i] for i in range(4, 8)]
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert [s[0].convs[-1][0].out_channels for s in stages] == [256, 512, 1024, 2048]
    assert [isinstance(s[0].pool, nn.AvgPool2d) for s in stages] == [False, True, True, True]
    assert isinstance(m[-1], nn.Linear) and m[-1].in_features == 2048
    r18 = create_model("resnet18")
    assert [len(s) for s in list(r18)[4:8]] == [2, 2, 2, 2]
    assert isinstance(r18[4][0].idconv, nn.Identity), "64 -> 64 first stage has no 1x1 conv"
    # most parameters late: the chapter's 256 -> 512 3x3 conv
    assert r18[7][0].convs[0][0].weight.numel() == 1_179_648


@pytest.mark.parametrize("name,width", [("resnet18", 0.5), ("resnet10", 0.75), ("resnet50", 0.25)])
def test_width_scales_every_width_of_a_resnet(name, width):
    layers, expansion = {"resnet18": ([2, 2, 2, 2], 1), "resnet10": ([1, 1, 1, 1], 1),
                         "resnet50": ([3, 4, 6, 3], 4)}[name]
    m = create_model(name, width=width)
    assert n_params(m) == expected_resnet(layers, expansion, width=width)
    assert m[-1].in_features == round(512 * width) * expansion
    assert m(torch.randn(2, 3, 40, 40)).shape == (2, 10)


def test_resnet10_is_fastais_xresnet_with_one_block_per_stage():
    from fastai.vision.models.xresnet import ResBlock as FastaiResBlock
    from fastai.vision.models.xresnet import XResNet

    assert n_params(create_model("resnet10")) == n_params(XResNet(FastaiResBlock, 1, [1, 1, 1, 1], n_out=10))


def test_stem_settings():
    m = ResNet(10, [1, 1], widths=(16, 24), stem_widths=(8, 16), stem_pool=False)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)][:2] == [8, 16]
    assert not any(isinstance(c, nn.MaxPool2d) for c in m.modules())
    body = m[:-3]
    assert body(torch.randn(1, 3, 32, 32)).shape == (1, 24, 8, 8), "no max-pool: 32 -> 16 (stem) -> 8 (stage 2)"
    pooled = ResNet(10, [1, 1], widths=(16, 24), stem_widths=(8, 16))[:-3]
    assert pooled(torch.randn(1, 3, 32, 32)).shape == (1, 24, 4, 4)


def test_width_and_stem_are_for_resnets_only():
    with pytest.raises(ValueError, match="width is a setting of the ResNets only"):
        create_model("cnn", width=0.5)
    with pytest.raises(ValueError, match="stem is a setting of the ResNets only"):
        create_model("res20", stem=(16,))
    with pytest.raises(ValueError, match="width must be"):
        create_model("resnet18", width=0)
    with pytest.raises(ValueError, match="one width per stage"):
        ResNet(10, [1, 1, 1], widths=(8, 16))


def test_stem_option_scales_with_width():
    "create_model's stem: the stem's conv widths before `width`; one conv keeps the stride-2 conv and the pool."
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    chapter, one = create_model("resnet18", width=0.5), create_model("resnet18", width=0.5, stem=(64,))
    assert [c.out_channels for c in convs(chapter)[:3]] == [16, 16, 32]
    assert convs(one)[0].out_channels == 32 and convs(one)[0].stride == (2, 2) and convs(one)[1].in_channels == 32
    assert sum(isinstance(c, nn.MaxPool2d) for c in one.modules()) == 1
    x = torch.randn(2, 3, 64, 64)
    assert one[:-3](x).shape == chapter[:-3](x).shape == (2, 256, 2, 2), "the same grid at every stage"
    assert [c.out_channels for c in convs(create_model("resnet18", stem=(32, 64)))[:2]] == [32, 64]


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_slices_are_plain_sequentials(name):
    m = create_model(name)
    body, head = m[:-3], m[-3:]
    assert type(body) is nn.Sequential and len(body) + len(head) == len(m)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    torch.testing.assert_close(head(body(x)), m(x))


def test_c_in_and_n_out():
    m = create_model("resnet18", n_out=3, c_in=1)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert ChapterCNN(n_out=2, c_in=1)(torch.randn(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("kw,match", [
    (dict(layers=[2, 0, 2, 2]), "each entry of layers must be an integer >= 1"),
    (dict(layers=[]), "1 to 4"), (dict(layers=[1] * 5), "1 to 4"),
    (dict(layers="2222"), "list"), (dict(layers=[2, 2], expansion=0), "expansion"),
    (dict(layers=[2, 2], n_out=0), "n_out"),
])
def test_bad_resnet_arguments(kw, match):
    kw.setdefault("n_out", 10)
    with pytest.raises(ValueError, match=match):
        ResNet(**kw)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="double_res"):
        ChapterCNN(block="triple")


@pytest.mark.parametrize("n", [1, 3, 9])
def test_depth_net_has_6n_plus_2_weight_layers_with_or_without_shortcuts(n):
    for residual in (False, True):
        m = DepthNet(n_out=10, n=n, residual=residual)
        convs3 = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
        assert len(convs3) + 1 == 6 * n + 2  # + the linear layer
        assert [c.out_channels for c in convs3][-1] == 64 and sum(c.stride == (2, 2) for c in convs3) == 2
        assert any(isinstance(b, ResBlock) for b in m.modules()) == residual
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # He et al. report 0.27M and 0.85M parameters for their 20- and 56-layer CIFAR ResNets
    assert round(n_params(create_model("res20")) / 1e6, 2) == 0.27
    assert round(n_params(create_model("res56")) / 1e6, 2) == 0.86


def test_bad_depth_net_arguments():
    with pytest.raises(ValueError, match="n must be"):
        DepthNet(n=0)
    with pytest.raises(ValueError, match="width"):
        DepthNet(width=-16)


@FAST
@given(layers=st.lists(st.integers(1, 2), min_size=1, max_size=4), expansion=st.integers(1, 4),
       n_out=st.integers(1, 12), c_in=st.integers(1, 4), h=st.integers(1, 80), w=st.integers(1, 80))
def test_every_valid_resnet_config_runs_at_every_size(layers, expansion, n_out, c_in, h, w):
    assert _forward_or_input_error(lambda: ResNet(n_out, layers, expansion, c_in), c_in, n_out, h, w) == "ran"


@FAST
@given(layers=layers_like, expansion=anything, n_out=anything, c_in=st.integers(1, 3))
def test_any_resnet_config_runs_or_is_rejected_clearly(layers, expansion, n_out, c_in):
    k = n_out if isinstance(n_out, int) else 1
    _forward_or_input_error(lambda: ResNet(n_out, layers, expansion, c_in), c_in, k, 40, 40)


@FAST
@given(block=st.sampled_from(["conv", "res", "double_res", "triple", ""]), n_out=anything,
       n=anything, residual=st.booleans(), h=st.integers(1, 64), w=st.integers(1, 64))
def test_chapter_cnns_and_depth_nets_run_or_are_rejected_clearly(block, n_out, n, residual, h, w):
    k = n_out if isinstance(n_out, int) else 1
    _forward_or_input_error(lambda: ChapterCNN(n_out, block), 3, k, h, w)
    _forward_or_input_error(lambda: DepthNet(n_out, n if not isinstance(n, int) or n < 3 else 1, residual), 3, k, h, w)


@FAST
@given(name=st.sampled_from(["cnn", "resnet18", "mnist_flat", "res20"]),
       shape=st.lists(st.integers(1, 40), min_size=2, max_size=5))
def test_a_wrongly_shaped_input_is_an_input_error(name, shape):
    model = create_model(name).eval()
    fits = len(shape) == 4 and shape[1] == 3 and (name != "mnist_flat" or shape[2:] == [28, 28])
    with torch.no_grad():
        if fits:
            assert model(torch.randn(*shape)).shape == (shape[0], 10)
        else:
            with pytest.raises(InputError, match="shaped|images only"):
                model(torch.randn(*shape))
