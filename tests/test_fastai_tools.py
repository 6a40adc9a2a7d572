"""fastai's own tools work on the library's Learner: predict, get_preds, show_results, show_batch,
ClassificationInterpretation, export and load_learner, for every loss option and both data paths."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.learner import load_learner

import resnets
from resnets.callbacks import Checkpoint, RunHistory, StopOnNaN

LOSSES = {"plain": {}, "label_smoothing": {"label_smoothing": 0.1}, "mixup": {"mixup": 0.4}}


@pytest.fixture(scope="module", params=[(loss, fast) for fast in (False, True) for loss in LOSSES],
                ids=lambda p: f"{p[0]}-{'fast' if p[1] else 'chapter'}")  # fmt: skip
def learn(request, imagenette, tmp_path_factory, monkeypatch_module):
    "An untrained learner on 2 real classes, 8 images each per split, 32 px: these checks need no training."
    loss, fast = request.param
    monkeypatch_module.setenv("RESNETS_CACHE", str(tmp_path_factory.mktemp("cache")))
    learn, _ = resnets.build("cnn", data=imagenette, fast_data=fast, classes=2, subset=8, size=32, presize=40, bs=8,
                             num_workers=0, verbose=False, **LOSSES[loss])  # fmt: skip
    return learn


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def titles() -> list[str]:
    return [ax.get_title() for fig in map(plt.figure, plt.get_fignums()) for ax in fig.axes if ax.get_title()]


def test_predict_gives_one_class_and_probabilities(learn):
    img = learn.dls.valid_ds.items[0]
    label, idx, probs = learn.predict(img)
    vocab = list(learn.dls.vocab)
    assert isinstance(label, str) and label in vocab, label
    assert isinstance(idx, torch.Tensor) and idx.ndim == 0 and vocab[int(idx)] == label
    assert probs.shape == (len(vocab),) and probs.min() >= 0
    assert probs.sum().item() == pytest.approx(1, abs=1e-5)
    assert int(probs.argmax()) == int(idx)


def test_get_preds_decodes_to_one_label_per_image(learn):
    probs, targs, decoded = learn.get_preds(with_decoded=True)
    n = len(learn.dls.valid_ds)
    assert decoded.shape == (n,) and targs.shape == (n,), "one decoded label per image"
    assert probs.shape == (n, learn.dls.c) and probs.sum(1).allclose(torch.ones(n), atol=1e-5), "probabilities"
    assert torch.equal(decoded, probs.argmax(1))


def test_show_batch_and_show_results_title_images_with_class_names(learn):
    vocab = set(learn.dls.vocab)
    learn.dls.show_batch(max_n=4)
    shown = titles()
    assert len(shown) == 4 and set(shown) <= vocab, shown
    plt.close("all")
    learn.show_results(max_n=4)
    shown = titles()
    # show_results titles each image with its target then the prediction, one class name per line
    assert len(shown) == 4 and all(len(t.split("\n")) == 2 and set(t.split("\n")) <= vocab for t in shown), shown


def test_interpretation_confusion_matrix_and_top_losses(learn):
    interp = ClassificationInterpretation.from_learner(learn)
    cm = interp.confusion_matrix()
    assert cm.shape == (learn.dls.c, learn.dls.c) and cm.sum() == len(learn.dls.valid_ds)
    interp.plot_confusion_matrix()
    interp.plot_top_losses(3)
    assert len(titles()) >= 3


@pytest.mark.filterwarnings("ignore:load_learner` uses Python's insecure pickle")
def test_export_then_load_learner_predicts_the_same(learn, tmp_path):
    img = learn.dls.valid_ds.items[0]
    path = tmp_path / "export.pkl"
    learn.export(path)
    loaded = load_learner(path)
    label, idx, probs = learn.predict(img)
    label2, idx2, probs2 = loaded.predict(img)
    assert (label2, int(idx2)) == (label, int(idx))
    torch.testing.assert_close(probs2, probs, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:load_learner` uses Python's insecure pickle")
def test_run_hands_back_its_trained_learner(imagenette, tmp_path):
    "After `run()`, `results.learn` is the trained Learner, without the run's callbacks, ready for fastai's tools."
    results = resnets.run("cnn", out=tmp_path / "run", progress=False, data=imagenette, classes=2, subset=8, size=32,
                          presize=40, bs=8, epochs=1, num_workers=0)  # fmt: skip
    learn = results.learn
    assert learn.train_iter == 2, "one epoch of 16 training images in batches of 8"
    assert not [cb for cb in learn.cbs if isinstance(cb, (Checkpoint, RunHistory, StopOnNaN))]
    label, idx, probs = learn.predict(learn.dls.valid_ds.items[0])
    assert label in learn.dls.vocab and probs.sum().item() == pytest.approx(1, abs=1e-5)
    learn.export(tmp_path / "export.pkl")  # nothing of the run (its folder, its Results) is left to pickle
    assert load_learner(tmp_path / "export.pkl").predict(learn.dls.valid_ds.items[0])[0] == label
