"""Property-based tests (hypothesis): any model config and input either works with the right shape or
raises the library's InputError, never an obscure error from deep inside torch."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnets import ChapterCNN, DepthNet, InputError, ResNet, create_model
from resnets.recipes import configure

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


@FAST
@given(layers=st.lists(st.integers(1, 2), min_size=1, max_size=4), expansion=st.integers(1, 4),
       n_out=st.integers(1, 12), c_in=st.integers(1, 4), h=st.integers(1, 80), w=st.integers(1, 80))  # fmt: skip
def test_every_valid_resnet_config_runs_at_every_size(layers, expansion, n_out, c_in, h, w):
    assert _forward_or_input_error(lambda: ResNet(n_out, layers, expansion, c_in), c_in, n_out, h, w) == "ran"


@FAST
@given(layers=layers_like, expansion=anything, n_out=anything, c_in=st.integers(1, 3))
def test_any_resnet_config_runs_or_is_rejected_clearly(layers, expansion, n_out, c_in):
    k = n_out if isinstance(n_out, int) else 1
    _forward_or_input_error(lambda: ResNet(n_out, layers, expansion, c_in), c_in, k, 40, 40)


@FAST
@given(block=st.sampled_from(["conv", "res", "double_res", "triple", ""]), n_out=anything,
       n=anything, residual=st.booleans(), h=st.integers(1, 64), w=st.integers(1, 64))  # fmt: skip
def test_chapter_cnns_and_depth_nets_run_or_are_rejected_clearly(block, n_out, n, residual, h, w):
    k = n_out if isinstance(n_out, int) else 1
    _forward_or_input_error(lambda: ChapterCNN(n_out, block), 3, k, h, w)
    _forward_or_input_error(lambda: DepthNet(n_out, n if not isinstance(n, int) or n < 3 else 1, residual), 3, k, h, w)


@FAST
@given(name=st.sampled_from(["cnn", "resnet18", "mnist_flat", "res20"]),
       shape=st.lists(st.integers(1, 40), min_size=2, max_size=5))  # fmt: skip
def test_a_wrongly_shaped_input_is_an_input_error(name, shape):
    model = create_model(name).eval()
    fits = len(shape) == 4 and shape[1] == 3 and (name != "mnist_flat" or shape[2:] == [28, 28])
    with torch.no_grad():
        if fits:
            assert model(torch.randn(*shape)).shape == (shape[0], 10)
        else:
            with pytest.raises(InputError, match="shaped|images only"):
                model(torch.randn(*shape))


@settings(max_examples=200, deadline=None)
@given(size=anything, presize=anything, bs=anything, epochs=anything, lr=anything, label_smoothing=anything,
       mixup=anything, subset=st.one_of(anything, st.tuples(anything, anything)))  # fmt: skip
def test_run_options_are_checked_at_the_edge(size, presize, bs, epochs, lr, label_smoothing, mixup, subset):
    try:
        exp = configure("cnn", verbose=False, size=size, presize=presize, bs=bs, epochs=epochs, lr=lr,
                        label_smoothing=label_smoothing, mixup=mixup, subset=subset)  # fmt: skip
    except InputError:
        return
    assert 16 <= exp.size <= exp.presize and exp.bs >= 1 and exp.epochs >= 1 and exp.lr > 0
    assert 0 <= exp.label_smoothing < 1 and exp.mixup >= 0
