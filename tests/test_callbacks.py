"""resnets.callbacks: progressive sizes, the test size, validating only the last epochs, the weight average,
BatchNorm re-estimation and the NaN guard, each on a real (tiny) training run."""


import pytest
import torch
from fastai.callback.core import Callback
from torch import nn

from conftest import TINY
from resnets import InputError, build, callbacks, configure, create_model, get_data, get_learner, load_results, run
from resnets.checkpoint import TrainingDiverged, load_checkpoint


class _NaNAfter(nn.Module):
    "Wraps a model; from the n-th training forward pass on, returns NaN."

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                return out * float("nan")
        return out


class _Sizes(Callback):
    "Records the image size of each epoch's training and validation batches."

    def before_fit(self):
        self.seen = {}

    def after_pred(self):
        self.seen.setdefault((self.epoch, self.training), set()).add(self.x.shape[-1])


def test_weight_average_is_what_validation_scores_and_the_model_keeps(tree):
    "The average is recomputed here from every step's weights; training carries on from its own weights."
    from fastai.callback.core import Callback

    from resnets.callbacks import WeightAverage

    steps, starts, scored = [], [], []

    class Watch(Callback):
        order = 90  # after WeightAverage's update

        def before_batch(self):
            if self.training and self.iter == 0:
                starts.append(self.model.state_dict()["0.0.weight"].clone())

        def after_step(self):
            steps.append({k: v.clone().float() for k, v in self.model.state_dict().items()})

        def after_validate(self):
            scored.append((len(steps), self.model.state_dict()["0.0.weight"].clone()))

    def average(n):
        avg = dict(steps[0])
        for s in steps[1:n]:
            avg = {k: 0.8 * avg[k] + 0.2 * s[k] for k in avg}
        return avg

    dls = get_data(tree, presize=40, resize=32, bs=4, num_workers=0)
    learn = get_learner(dls, create_model("cnn", n_out=dls.c), cbs=[WeightAverage(0.8), Watch()], verbose=False)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
    assert len(scored) == 2 and all(torch.allclose(w, average(n)["0.0.weight"], atol=1e-6) for n, w in scored), \
        "each epoch's validation scored the average of the steps so far"
    kept, final = learn.model.state_dict(), average(len(steps))
    for k, v in kept.items():
        if v.is_floating_point():
            assert torch.allclose(v, final[k], atol=1e-6), k
    assert not torch.allclose(kept["0.0.weight"], steps[-1]["0.0.weight"]), "the average, not the last step"
    assert len(starts) == 2 and torch.equal(starts[1], steps[scored[0][0] - 1]["0.0.weight"]), \
        "the second epoch trains on from the first's last step, not from the average"
    with pytest.raises(Exception, match="decay must be between 0 and 1"):
        WeightAverage(1.0)


def test_batchnorm_recalibration_averages_what_validation_sees_on_training_images(tree):
    from resnets.evaluate import recalibrate_bn

    dls = get_data(tree, presize=40, resize=32, bs=4, num_workers=0)
    learn = get_learner(dls, create_model("cnn", n_out=dls.c), verbose=False)
    bn = next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d))
    weights = {k: v.clone() for k, v in learn.model.state_dict().items() if "running" not in k}
    learn.model.train()
    assert recalibrate_bn(learn, n=8) == 8
    assert learn.model.training, "the model's mode is put back"
    items = dls.train_ds.items
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:8].tolist()
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    learn.model.eval()
    with torch.no_grad():
        for (xb,) in dls.test_dl([items[i] for i in pick], bs=4):  # validation's preprocessing
            learn.model(xb)
    hook.remove()
    assert len(seen) == 2
    mean = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-4)
    assert bn.momentum == 0.1, "the layer's own momentum is put back"
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in weights.items() if "num_batches" not in k)


@pytest.mark.parametrize("epochs", [1, 2])
def test_recalibration_runs_once_before_the_last_validation(tree, monkeypatch, epochs):
    calls = []
    monkeypatch.setattr(callbacks, "recalibrate_bn", lambda learn, n: calls.append((learn.epoch, learn.training)))
    r = run("cnn", data=tree, presize=40, size=32, bs=4, epochs=epochs, recalibrate_bn=True, save=False,
            progress=False, num_workers=0)
    assert calls == [(epochs - 1, False)] and r.settings["recalibrate_bn"] is True
    with r.learn.no_bar():  # fastai's own tools after the run keep the statistics the run validated with
        r.learn.get_preds()
        r.learn.validate()
    assert calls == [(epochs - 1, False)]


def test_a_nan_loss_stops_the_run_naming_where_and_keeps_the_last_good_epoch(imagenette, tmp_path, monkeypatch):
    from resnets import training

    real = training.create_model
    monkeypatch.setattr(training, "create_model", lambda *a, **k: _NaNAfter(real(*a, **k), n=2 + 2))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 2 of 2.*lower maximum learning rate.*checkpoint"):
        run("cnn", data=imagenette, out=tmp_path / "nan", progress=False, num_workers=0, **{**TINY, "epochs": 3})
    assert load_checkpoint(tmp_path / "nan")["epoch"] == 0
    r = load_results(tmp_path / "nan")
    assert len(r.history) == 1 and not r.finished


def test_sizes_stretch_over_the_epochs_and_the_last_validation_uses_the_test_size(imagenette):
    exp = configure("cnn", verbose=False, epochs=4, sizes=(32, 48), test_size=56, presize=64)
    assert [exp.train_size(e) for e in range(4)] == [32, 32, 48, 48] and exp.valid_size == 56
    assert [exp.train_size(e, 3) for e in range(3)] == [32, 32, 48], "stretched to whatever number of epochs"
    probe = _Sizes()
    kw = {**TINY, "epochs": 4, "presize": 64, "size": 48}
    learn, _ = build("cnn", data=imagenette, cbs=probe, verbose=False, **kw, fast_data=True, sizes=(32, 48),
                     test_size=56)
    with learn.no_bar():
        learn.fit_one_cycle(4, 1e-3)
    assert {k: v for k, v in probe.seen.items() if k[1]} == {(0, True): {32}, (1, True): {32}, (2, True): {48},
                                                             (3, True): {48}}
    assert {k[0]: v for k, v in probe.seen.items() if not k[1]} == {0: {32}, 1: {32}, 2: {48}, 3: {56}}, \
        "each epoch validates at its training size, the last at the test size"
    x, _ = learn.dls.valid.one_batch()
    assert x.shape[-1] == 56, "after fit the loaders stay at the size validation used (predict, Interpretation)"
    # fastai's get_preds and predict wrap their pass in the fit events (before_fit sets the epoch to 0): they still
    # predict at the test size, not at the first epoch's training size
    inp, _, _ = learn.get_preds(with_input=True)
    assert inp.shape[-1] == 56 and learn.dls.valid.one_batch()[0].shape[-1] == 56


@pytest.mark.parametrize("fast", [False, True])
def test_test_size_on_both_pipelines(imagenette, fast):
    learn, _ = build("cnn", data=imagenette, verbose=False, **{**TINY, "presize": 48}, fast_data=fast, test_size=40)
    preds, _ = learn.get_preds()
    assert preds.shape == (16, 2)
    x, _ = learn.dls.valid.one_batch()
    assert x.shape[-1] == 40


def test_valid_last_validates_only_the_last_epochs(imagenette, tmp_path, capsys, monkeypatch):
    "valid_last=1 of 3 epochs: one validation pass; the earlier epochs' metrics empty in the history, log and plot."
    import json

    probe = _Sizes()
    r = run("cnn", data=imagenette, out=tmp_path / "r", progress=False, valid_last=1, tta=True, cbs=[probe],
            **{**TINY, "epochs": 3})
    assert {e for e, training in probe.seen if not training} == {2}, "no validation batch before the last epoch"
    h = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    assert [e["accuracy"] is None and e["valid_loss"] is None for e in h] == [True, True, False]
    assert all(e["train_loss"] > 0 for e in h) and r.accuracy == h[-1]["accuracy"] and r.tta_accuracy is not None
    assert (tmp_path / "r" / "results.png").stat().st_size > 0 and (tmp_path / "r" / "confusion_matrix.png").exists()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[2] for row in rows] == ["-", "-", f"{h[-1]['valid_loss']:.4f}"]
    with pytest.raises(InputError, match="valid_last"):
        configure("cnn", valid_last=0)
    with r.learn.no_bar():  # fastai's tools after the run: get_preds' pass is not one of the fit's skipped ones
        preds, _ = r.learn.get_preds()
        r.learn.show_results(max_n=2)
    assert preds.shape == (16, 2)
    every = run("cnn", data=imagenette, save=False, progress=False, **{**TINY, "epochs": 3})
    # the same first epoch; later ones differ in their random draws only (torch's DataLoader takes a seed from the
    # global generator for each validation pass it starts)
    assert every.history[0]["train_loss"] == h[0]["train_loss"] and every.history[1]["accuracy"] is not None


def test_the_checkpoint_s_write_time_is_recorded_beside_the_epoch_s(tmp_path, monkeypatch):
    "A checkpoint is written after the epoch's `time` is taken (on a GPU, hundreds of MB through the CPU): kept too."
    import time

    from conftest import make_tree
    from resnets import callbacks, load_results, run

    real = callbacks.save_checkpoint
    monkeypatch.setattr(callbacks, "save_checkpoint", lambda *a, **k: (time.sleep(0.3), real(*a, **k)))
    data = make_tree(tmp_path / "data", n_train=4, n_valid=2)
    run("cnn", data=data, out=tmp_path / "r", size=32, presize=32, bs=4, epochs=2, progress=False, num_workers=0)
    history = load_results(tmp_path / "r").history
    assert len(history) == 2 and all(h["checkpoint_s"] >= 0.3 for h in history)
