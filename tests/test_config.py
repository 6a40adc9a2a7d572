"""resnets.config: one record holds every setting, and each group of settings checks itself once."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnets import InputError, configure, run

anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(-2, 5), st.text(max_size=3))


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs must be an integer >= 1"), (dict(size=8), "size must be an integer >= 16"),
    (dict(bs=0), "bs must"), (dict(lr=0.0), "lr must be a number > 0"), (dict(lr=-1e-3), "lr must"),
    (dict(subset=0), "subset must"), (dict(label_smoothing=1.0), "label_smoothing must"),
    (dict(mixup=-0.1), "mixup must"), (dict(opt="sgd"), "unknown opt 'sgd': choose one of adam, ranger"),
    (dict(schedule="cos"), "unknown schedule"), (dict(init="x", schedule="flat_cos"), "leave --schedule out"),
])
def test_bad_options(kw, match, tree):
    with pytest.raises(ValueError, match=match):
        run("cnn", data=tree, save=False, progress=False, **kw)


def test_one_record_holds_every_setting_and_overrides_are_checked_once():
    from dataclasses import fields

    from resnets import OPTIONS, Experiment, configure

    assert set(OPTIONS) == {f.name for f in fields(Experiment)} - {"name", "title", "book_accuracy",
                                                                     "book_valid_loss", "book_epoch_time"}
    exp = configure("res_cnn", verbose=False, epochs=2, fast_data=True, precision="fp32", size=None)
    assert (exp.epochs, exp.fast_data, exp.precision, exp.size) == (2, True, "fp32", 128), "None keeps the default"
    assert configure(exp, verbose=False) == exp, "a configured record passes through"
    with pytest.raises(ValueError, match=r"unknown setting epoch: the settings are model, width, stem, zero_gamma, "
                                         r"init, pretrained, data, presize, size"):
        configure("cnn", epoch=3)
    with pytest.raises(ValueError, match="unknown settings fastdata, sise"):
        run("cnn", fastdata=True, sise=64)
    with pytest.raises(ValueError, match="unknown model"):
        configure("cnn", model="resnet19")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Experiment("x", model="cnn", precision="fp8")  # the record checks itself, however it is made


@settings(max_examples=200, deadline=None)
@given(size=anything, presize=anything, bs=anything, epochs=anything, lr=anything, label_smoothing=anything,
       mixup=anything, subset=st.one_of(anything, st.tuples(anything, anything)))
def test_run_options_are_checked_at_the_edge(size, presize, bs, epochs, lr, label_smoothing, mixup, subset):
    try:
        exp = configure("cnn", verbose=False, size=size, presize=presize, bs=bs, epochs=epochs, lr=lr,
                        label_smoothing=label_smoothing, mixup=mixup, subset=subset)
    except InputError:
        return
    assert 16 <= exp.size <= exp.presize and (exp.bs is None or exp.bs >= 1) and exp.epochs >= 1 and exp.lr > 0
    assert 0 <= exp.label_smoothing < 1 and exp.mixup >= 0


def test_bad_schedule_settings_are_clear():
    with pytest.raises(InputError, match=r"sizes \(200\) is larger than presize \(160\)"):
        configure("cnn", sizes=(200, 128), presize=160)
    with pytest.raises(InputError, match="sizes must end at the training size"):
        configure("cnn", sizes=(64, 96), size=128)
    with pytest.raises(InputError, match="holdout must be a fraction"):
        configure("cnn", holdout=1.5)
    with pytest.raises(InputError, match="a duration must be"):
        configure("cnn", budget="ten minutes")
    assert configure("cnn", budget="10m").budget == 600 and configure("cnn", budget="90s").budget == 90
