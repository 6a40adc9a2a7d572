"""`compile=True` (--compile): torch.compile inside fastai's loop changes how fast a step runs, not what the run
is: its checkpoints resume to an uninterrupted compiled run's history, it exports and predicts, it fine-tunes
through freeze and unfreeze, and a run may be resumed with compile switched (the state_dict is the same)."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException

from conftest import curve, make_tree
from resnets import export, load, load_results, run, training
from resnets.callbacks import Checkpoint

pytestmark = pytest.mark.slow  # compiling takes a minute or more on a small CPU


class _StopAfter(Callback):
    "Ends the fit after `n` epochs, once the last one's checkpoint is saved (a kill, minus the kill)."

    order = Checkpoint.order + 1

    def __init__(self, n):
        self.n = n

    def after_epoch(self):
        if self.epoch + 1 == self.n:
            raise CancelFitException()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("compile") / "data", n_train=8, n_valid=3)


KW = dict(size=32, presize=40, bs=4, epochs=3, progress=False, num_workers=0, seed=0, precision="fp32")


def test_a_compiled_run_resumes_exports_and_fine_tunes(data, tmp_path, monkeypatch):
    learn, _ = training.build("cnn", data=data, compile=True, verbose=False, **{k: KW[k] for k in ("size", "presize",
                              "bs", "num_workers")})
    plain, _ = training.build("cnn", data=data, verbose=False, **{k: KW[k] for k in ("size", "presize", "bs",
                              "num_workers")})
    assert list(learn.model.state_dict()) == list(plain.model.state_dict()), "compiled in place: the same keys"

    ref = run("cnn", data=data, out=tmp_path / "ref", compile=True, **KW)
    with monkeypatch.context() as m:  # stopped after epoch 1, then resumed
        real = training.build
        m.setattr(training, "build", lambda *a, cbs=None, **k: real(*a, cbs=[*(cbs or []), _StopAfter(1)], **k))
        run("cnn", data=data, out=tmp_path / "r", compile=True, **KW)
    assert len(load_results(tmp_path / "r").history) == 1
    done = run("cnn", data=data, out=tmp_path / "r", compile=True, resume=True, **KW)
    assert curve(done) == curve(ref), "the same numbers as an uninterrupted compiled run"

    predictor = load(export(tmp_path / "ref"))
    img = next((data / "val" / "cat").glob("*.jpg"))
    probs = ref.learn.predict(img)[2]
    top = {name: p for _, name, p in predictor.predict(img)}
    assert top["cat"] == pytest.approx(float(probs[0]), abs=1e-4), "the exported model predicts as the compiled one"

    tuned = run("cnn", data=data, out=tmp_path / "tuned", init=tmp_path / "ref", compile=True,
                **{**KW, "epochs": 1})  # frozen body, then every layer
    assert tuned.finished and len(tuned.history) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"]))
                                                              for h in tuned.history)


def test_a_run_resumes_with_compile_switched(data, tmp_path, monkeypatch):
    "A run started compiled goes on uncompiled (and the other way): the same model, so not refused as other settings."
    with monkeypatch.context() as m:
        real = training.build
        m.setattr(training, "build", lambda *a, cbs=None, **k: real(*a, cbs=[*(cbs or []), _StopAfter(1)], **k))
        run("cnn", data=data, out=tmp_path / "r", compile=True, **KW)
    done = run("cnn", data=data, out=tmp_path / "r", compile=False, resume=True, **KW)
    assert done.finished and len(done.history) == 3
