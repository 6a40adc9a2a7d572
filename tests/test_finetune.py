"""Fine-tuning from an earlier run (`init`), and what a run shows about its mistakes (confusion matrix, top losses,
per-class accuracy, `resnets interpret`), on real images."""

import pytest
import torch
from fastai.interpret import ClassificationInterpretation

from conftest import TINY
from resnets import InputError, MissingFile, build, run
from resnets.cli import main
from resnets.evaluate import Interpretation
from resnets.export import export

FIRST, OTHER = ("n01440764", "n02102040"), ("n02979186", "n03000684", "n03028079")  # tench, springer | 3 others
KW = {**TINY, "subset": 6, "model": "resnet18", "width": 0.25, "fast_data": True}


@pytest.fixture(scope="module")
def source(imagenette, tmp_path_factory):
    "A tiny ResNet trained on two classes: the run that fine-tuning starts from."
    folder = tmp_path_factory.mktemp("source") / "run"
    run("resnet18", data=imagenette, out=folder, progress=False, **{**KW, "classes": FIRST})
    return folder


def _body(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{len(model) - 1}.")}


@pytest.mark.parametrize("from_file", [False, True])
def test_init_loads_the_body_and_makes_a_new_head_for_the_new_classes(imagenette, source, tmp_path, from_file):
    init = export(source, tmp_path / "m.resnets") if from_file else source
    learn, _ = build("resnet18", data=imagenette, verbose=False, init=init, **{**KW, "classes": OTHER})
    trained = torch.load(source / "checkpoint.pth", weights_only=True)["model"]
    body = _body(learn.model)
    assert body and all(torch.equal(v, trained[k]) for k, v in body.items()), "every body weight is the run's"
    head = learn.model[-1]
    assert head.out_features == 3 and trained[f"{len(learn.model) - 1}.weight"].shape[0] == 2
    learn.create_opt()
    assert len(learn.opt.param_lists) == 2, "body and head: fastai can freeze and use discriminative rates"


def test_fine_tuning_runs_fastais_schedule_frozen_body_first(imagenette, source, tmp_path):
    from fastai.callback.core import Callback

    seen = []

    class Frozen(Callback):
        def before_epoch(self):
            seen.append([all(not p.requires_grad for p in self.learn.model[0].parameters()
                             if p.dim() > 1)])  # fmt: skip

    r = run("resnet18", data=imagenette, out=tmp_path / "ft", progress=False, init=source, freeze_epochs=1,
            **{**KW, "classes": OTHER, "epochs": 2})  # fmt: skip
    assert [h["epoch"] for h in r.history] == [0, 1, 2], "the frozen epoch, then 2 of the whole network"
    assert r.settings["init"] == str(source)
    # the same Learner, fine-tuned again, shows fastai's freeze / unfreeze around the first fit
    learn, _ = build("resnet18", data=imagenette, verbose=False, init=source, cbs=Frozen(),
                     **{**KW, "classes": OTHER})  # fmt: skip
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert seen == [[True], [False]], "the body's convolutions train only after the frozen epoch"


def test_lr_mult_sets_how_much_slower_the_body_learns(imagenette, source, tmp_path, monkeypatch):
    "`lr_mult` reaches fastai's fine_tune: once unfrozen, the head's rate is the body's times lr_mult at every step."
    from fastai.callback.core import Callback
    from fastai.learner import Learner

    ratios, fine_tune = [], Learner.fine_tune

    class Rates(Callback):
        def after_batch(self):
            if self.training and all(p.requires_grad for p in self.model[0].parameters()):  # the whole network trains
                body, head = (h["lr"] for h in self.opt.hypers)
                ratios.append(head / body)

    def watched(learn, *args, **kw):
        learn.add_cb(Rates())
        return fine_tune(learn, *args, **kw)

    monkeypatch.setattr(Learner, "fine_tune", watched)
    run("resnet18", data=imagenette, out=tmp_path / "ft", progress=False, init=source, lr_mult=10,
        **{**KW, "classes": OTHER, "epochs": 1})  # fmt: skip
    assert ratios and all(r == pytest.approx(10) for r in ratios)
    with pytest.raises(InputError, match="lr_mult must be a number >= 1"):
        build("resnet18", data=imagenette, verbose=False, init=source, lr_mult=0.5, **{**KW, "classes": OTHER})


def test_init_errors_name_the_fix(imagenette, source, tmp_path):
    with pytest.raises(InputError, match="--model resnet18 --width 0.25"):
        build("resnet18", data=imagenette, verbose=False, init=source, **{**KW, "width": 0.5, "classes": OTHER})
    with pytest.raises(InputError, match=r"builds a resnet18 \(width 0.25, stem 64\): pass --model resnet18 "
                                         r"--width 0.25$"):  # fmt: skip
        build("resnet18", data=imagenette, verbose=False, init=source, **{**KW, "stem": (64,), "classes": OTHER})
    with pytest.raises(MissingFile, match="nothing to start from"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "nope", **{**KW, "classes": OTHER})
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(InputError, match="is an ONNX file"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "m.onnx", **{**KW, "classes": OTHER})
    with pytest.raises(MissingFile, match="no checkpoint.pth"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "empty", **{**KW, "classes": OTHER})
    with pytest.raises(InputError, match="cannot be resumed"):
        run("resnet18", data=imagenette, out=source, resume=True, init=source, **KW)


def test_every_run_draws_its_mistakes_and_records_per_class_accuracy(source):
    assert (source / "confusion_matrix.png").stat().st_size > 1000
    assert (source / "top_losses.png").stat().st_size > 1000
    import json

    r = json.loads((source / "results.json").read_text())
    per_class = r["per_class_accuracy"]
    assert set(per_class) == {"tench", "English springer"}, "named by their readable names"
    n = r["settings"]["n_valid"] // 2  # 6 validation images of each class
    assert sum(a * n for a in per_class.values()) / (2 * n) == pytest.approx(r["history"][-1]["accuracy"])


def test_the_confusion_matrix_is_fastais(imagenette):
    learn, _ = build("cnn", data=imagenette, verbose=False, **{**TINY, "classes": 3})
    with learn.no_bar():
        ours, theirs = Interpretation.from_learner(learn), ClassificationInterpretation.from_learner(learn)
        assert (ours.confusion_matrix() == theirs.confusion_matrix()).all()
        assert torch.allclose(ours.losses, theirs.losses)
    assert ours.confusion_matrix().sum() == len(learn.dls.valid_ds)


def test_resnets_interpret_redraws_a_run(source, capsys):
    for f in ("confusion_matrix.png", "top_losses.png"):
        (source / f).unlink()
    assert main(["interpret", str(source), "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "tench" in out and "English springer" in out and "%" in out
    assert (source / "confusion_matrix.png").exists() and (source / "top_losses.png").exists()
    assert main(["interpret", str(source.parent / "missing")]) == 2
    assert "no trained run" in capsys.readouterr().err
