"""The speedrun's pieces: progressive resizing, a larger test size, flip TTA, a held-out split, training to a budget."""

import time
from dataclasses import replace

import pytest
import torch
from fastai.callback.core import Callback

from conftest import TINY
from resnets import InputError, build, configure, get_data, get_experiment, run
from resnets.evaluate import flip_tta_accuracy


class _Sizes(Callback):
    "Records the image size of each epoch's training and validation batches."

    def before_fit(self):
        self.seen = {}

    def after_pred(self):
        self.seen.setdefault((self.epoch, self.training), set()).add(self.x.shape[-1])


def test_sizes_stretch_over_the_epochs_and_the_last_validation_uses_the_test_size(imagenette):
    exp = configure("cnn", verbose=False, epochs=4, sizes=(32, 48), test_size=56, presize=64)
    assert [exp.train_size(e) for e in range(4)] == [32, 32, 48, 48] and exp.valid_size == 56
    assert [exp.train_size(e, 3) for e in range(3)] == [32, 32, 48], "stretched to whatever number of epochs"
    probe = _Sizes()
    kw = {**TINY, "epochs": 4, "presize": 64, "size": 48}
    learn, _ = build("cnn", data=imagenette, cbs=probe, verbose=False, **kw, fast_data=True, sizes=(32, 48),
                     test_size=56)  # fmt: skip
    with learn.no_bar():
        learn.fit_one_cycle(4, 1e-3)
    assert {k: v for k, v in probe.seen.items() if k[1]} == {(0, True): {32}, (1, True): {32}, (2, True): {48},
                                                             (3, True): {48}}  # fmt: skip
    assert {k[0]: v for k, v in probe.seen.items() if not k[1]} == {0: {32}, 1: {32}, 2: {48}, 3: {56}}, \
        "each epoch validates at its training size, the last at the test size"
    x, _ = learn.dls.valid.one_batch()
    assert x.shape[-1] == 56, "after fit the loaders stay at the size validation used (predict, Interpretation)"


@pytest.mark.parametrize("fast", [False, True])
def test_test_size_on_both_pipelines(imagenette, fast):
    learn, _ = build("cnn", data=imagenette, verbose=False, **{**TINY, "presize": 48}, fast_data=fast, test_size=40)
    preds, _ = learn.get_preds()
    assert preds.shape == (16, 2)
    x, _ = learn.dls.valid.one_batch()
    assert x.shape[-1] == 40


def test_a_size_given_alone_replaces_a_progressive_schedule(capsys):
    tested_larger = replace(get_experiment("speedrun10"), test_size=112)  # a recipe with a schedule and a test size
    sized = configure(tested_larger, size=32, presize=112)  # the test size is the user's to change: it stays
    assert sized.sizes == () and sized.size == 32 and sized.valid_size == 112 and sized.test_size == 112
    assert "size 32 throughout" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"test_size \(112\) is larger than presize \(40\)"):
        configure(tested_larger, size=32, presize=40)
    assert configure(tested_larger, verbose=False).test_size == 112
    assert configure("speedrun10", verbose=False).sizes, "the recipe itself keeps its schedule"
    assert configure("speedrun10", verbose=False, sizes=(32, 40), presize=48).size == 40


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


def test_holdout_scores_on_training_images_only(imagenette):
    dls = get_data(imagenette, presize=40, resize=32, bs=8, classes=2, subset=(40, 8), holdout=0.25)
    train, valid = dls.train_ds.items, dls.valid_ds.items
    assert all(f.parent.parent.name == "train" for f in train + valid), "val/ untouched"
    assert len(valid) == 20 and len(train) == 60 and not set(train) & set(valid)
    again = get_data(imagenette, presize=40, resize=32, bs=8, classes=2, subset=(40, 8), holdout=0.25, fast=True)
    assert sorted(again.valid_ds.items) == sorted(valid), "the same images held out every time, on both paths"


def test_flip_tta_averages_an_image_and_its_mirror(imagenette):
    learn, _ = build("cnn", data=imagenette, verbose=False, **TINY)
    model = learn.model.eval()
    hits = 0
    with torch.no_grad():
        for xb, yb in learn.dls.valid:
            x = xb.as_subclass(torch.Tensor)
            p = model(x).softmax(1) + model(torch.flip(x, [3])).softmax(1)
            hits += (p.argmax(1) == yb.as_subclass(torch.Tensor)).sum().item()
    assert flip_tta_accuracy(learn) == hits / 16
    r = run("cnn", data=imagenette, save=False, progress=False, tta=True, **TINY)
    assert r.tta_accuracy is not None and 0 <= r.tta_accuracy <= 1 and "flip TTA" in r.summary()


def test_flip_tta_reuses_the_last_validation(imagenette):
    "A fit's last validation, kept: the same TTA accuracy and logits, from half the forward passes."
    from resnets.callbacks import LastValidPreds
    from resnets.evaluate import flip_tta

    keep = LastValidPreds()
    learn, _ = build("cnn", data=imagenette, verbose=False, cbs=keep, **TINY)
    learn.fit(2)
    assert keep.kept is not None and len(keep.kept[0]) == 16
    calls = []
    hook = learn.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    reused = flip_tta(learn, keep.kept)
    n_reused, calls[:] = len(calls), []
    fresh = flip_tta(learn)
    hook.remove()
    assert reused[0] == fresh[0] and torch.allclose(reused[1], fresh[1], atol=1e-5) and torch.equal(reused[2], fresh[2])
    assert sum(calls) == 32 and n_reused * 2 == len(calls), "the mirrored images only"
    assert flip_tta(learn, (keep.kept[0][:3], keep.kept[1][:3]))[0] == fresh[0], "a partial set is not reused"


def test_valid_last_validates_only_the_last_epochs(imagenette, tmp_path, capsys, monkeypatch):
    "valid_last=1 of 3 epochs: one validation pass; the earlier epochs' metrics empty in the history, log and plot."
    import json

    import resnets.training as training

    probe, build_ = _Sizes(), training.build
    monkeypatch.setattr(training, "build", lambda *a, **kw: build_(*a, cbs=probe, **kw))
    r = run("cnn", data=imagenette, out=tmp_path / "r", progress=False, valid_last=1, tta=True, **{**TINY, "epochs": 3})
    assert {e for e, training in probe.seen if not training} == {2}, "no validation batch before the last epoch"
    h = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    assert [e["accuracy"] is None and e["valid_loss"] is None for e in h] == [True, True, False]
    assert all(e["train_loss"] > 0 for e in h) and r.accuracy == h[-1]["accuracy"] and r.tta_accuracy is not None
    assert (tmp_path / "r" / "results.png").stat().st_size > 0 and (tmp_path / "r" / "confusion_matrix.png").exists()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[2] for row in rows] == ["-", "-", f"{h[-1]['valid_loss']:.4f}"]
    with pytest.raises(InputError, match="valid_last"):
        configure("cnn", valid_last=0)
    every = run("cnn", data=imagenette, save=False, progress=False, **{**TINY, "epochs": 3})
    # the same first epoch; later ones differ in their random draws only (torch's DataLoader takes a seed from the
    # global generator for each validation pass it starts)
    assert every.history[0]["train_loss"] == h[0]["train_loss"] and every.history[1]["accuracy"] is not None


def test_the_interpretation_reuses_the_tta_pass(imagenette):
    "The TTA pass's plain logits give the interpretation get_preds would: the same probabilities, losses, matrix."
    from resnets.evaluate import Interpretation, flip_tta

    learn, _ = build("cnn", data=imagenette, verbose=False, label_smoothing=0.1, **TINY)
    learn.fit(1)
    acc, logits, targs = flip_tta(learn)
    reused, fresh = Interpretation.from_predictions(learn, logits, targs), Interpretation.from_learner(learn)
    assert torch.equal(reused.targs, fresh.targs) and len(reused.losses) == 16
    assert torch.allclose(reused.preds, fresh.preds, atol=1e-5) and torch.allclose(reused.losses, fresh.losses,
                                                                                     atol=1e-5)  # fmt: skip
    assert (reused.confusion_matrix() == fresh.confusion_matrix()).all()
    with pytest.raises(ValueError, match="3 predictions and 3 targets for 16 images"):
        Interpretation.from_predictions(learn, logits[:3], targs[:3])


@pytest.mark.slow
def test_a_budget_fits_the_epochs_and_is_kept(imagenette, tmp_path):
    kw = dict(data=imagenette, classes=2, subset=(48, 16), size=32, presize=40, bs=8, progress=False)
    budget = 20.0
    start = time.perf_counter()
    r = run("cnn", out=tmp_path / "b", budget=budget, **kw)
    took = time.perf_counter() - start
    plan = r.settings["budget_plan"]
    assert plan["epochs"] == r.settings["epochs"] == len(r.history) >= 1, "the computed schedule is the one run"
    assert took <= budget * 1.25 + 2, f"{took:.1f} s for a {budget:.0f} s budget (tolerance 25 % + 2 s)"
    assert abs(plan["predicted_s"] - r.wall_time) < 0.5 * budget, (plan, r.wall_time)
    with pytest.raises(InputError, match=r"too small for one epoch .* at least --budget \d+"):
        run("cnn", save=False, budget=0.5, **kw)
