"""Fine-tuning from an earlier run (`init`), and what a run shows about its mistakes (confusion matrix, top losses,
per-class accuracy, `resnets interpret`), on real images."""

import pytest
import torch

from conftest import TINY_RESNET
from resnets import InputError, MissingFile, build, run
from resnets.checkpoint import load_checkpoint
from resnets.deploy import export

OTHER = ("n02979186", "n03000684", "n03028079")  # three classes other than the ones the tiny ResNet learnt
ON_OTHER = {**TINY_RESNET, "classes": OTHER}


def _body(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{len(model) - 1}.")}


@pytest.mark.parametrize("from_file", [False, True])
def test_init_loads_the_body_and_makes_a_new_head_for_the_new_classes(imagenette, tiny_resnet, tmp_path, from_file):
    init = export(tiny_resnet, tmp_path / "m.resnets") if from_file else tiny_resnet
    learn, _ = build("resnet18", data=imagenette, verbose=False, init=init, **ON_OTHER)
    trained = load_checkpoint(tiny_resnet)["model"]
    body = _body(learn.model)
    assert body and all(torch.equal(v, trained[k]) for k, v in body.items()), "every body weight is the run's"
    head = learn.model[-1]
    assert head.out_features == 3 and trained[f"{len(learn.model) - 1}.weight"].shape[0] == 2
    learn.create_opt()
    assert len(learn.opt.param_lists) == 2, "body and head: fastai can freeze and use discriminative rates"


def test_fine_tuning_runs_fastais_schedule_frozen_body_first(imagenette, tiny_resnet, tmp_path):
    from fastai.callback.core import Callback

    seen = []

    class Frozen(Callback):
        def before_epoch(self):
            seen.append([all(not p.requires_grad for p in self.learn.model[0].parameters()
                             if p.dim() > 1)])

    r = run("resnet18", data=imagenette, out=tmp_path / "ft", progress=False, init=tiny_resnet, freeze_epochs=1,
            **{**TINY_RESNET, "classes": OTHER, "epochs": 2})
    assert [h["epoch"] for h in r.history] == [0, 1, 2], "the frozen epoch, then 2 of the whole network"
    assert r.settings["init"] == str(tiny_resnet)
    # the same Learner, fine-tuned again, shows fastai's freeze / unfreeze around the first fit
    learn, _ = build("resnet18", data=imagenette, verbose=False, init=tiny_resnet, cbs=Frozen(),
                     **ON_OTHER)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert seen == [[True], [False]], "the body's convolutions train only after the frozen epoch"


def test_lr_mult_sets_how_much_slower_the_body_learns(imagenette, tiny_resnet, tmp_path):
    "`lr_mult` reaches the fine-tuning: once unfrozen, the head's rate is the body's times lr_mult at every step."
    from fastai.callback.core import Callback

    ratios = []

    class Rates(Callback):
        def after_batch(self):
            if self.training and all(p.requires_grad for p in self.model[0].parameters()):  # the whole network trains
                body, head = (h["lr"] for h in self.opt.hypers)
                ratios.append(head / body)

    run("resnet18", data=imagenette, out=tmp_path / "ft", progress=False, init=tiny_resnet, lr_mult=10, cbs=[Rates()],
        **{**TINY_RESNET, "classes": OTHER, "epochs": 1})
    assert ratios and all(r == pytest.approx(10) for r in ratios)
    with pytest.raises(InputError, match="lr_mult must be a number >= 1"):
        build("resnet18", data=imagenette, verbose=False, init=tiny_resnet, lr_mult=0.5, **ON_OTHER)


def test_init_errors_name_the_fix(imagenette, tiny_resnet, tmp_path):
    with pytest.raises(InputError, match="--model resnet18 --width 0.25"):
        build("resnet18", data=imagenette, verbose=False, init=tiny_resnet, **{**ON_OTHER, "width": 0.5})
    with pytest.raises(InputError, match=r"builds a resnet18 \(width 0.25, stem 64\): pass --model resnet18 "
                                         r"--width 0.25$"):
        build("resnet18", data=imagenette, verbose=False, init=tiny_resnet, **{**ON_OTHER, "stem": (64,)})
    with pytest.raises(MissingFile, match="nothing to start from"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "nope", **ON_OTHER)
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(InputError, match="is an ONNX file"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "m.onnx", **ON_OTHER)
    with pytest.raises(MissingFile, match="no checkpoint.safetensors"):
        build("resnet18", data=imagenette, verbose=False, init=tmp_path / "empty", **ON_OTHER)


def test_a_fine_tuning_budget_is_kept(imagenette, tiny_resnet, tmp_path):
    "A fine-tuning run with --budget ends within the budget's tolerance (25 % + 2 s), both fits planned."
    import time

    budget, start = 30.0, time.perf_counter()
    r = run("resnet18", data=imagenette, out=tmp_path / "b", progress=False, init=tiny_resnet, budget=budget,
            **{**TINY_RESNET, "classes": OTHER, "subset": (32, 8)})
    took = time.perf_counter() - start
    assert took <= budget * 1.25 + 2, f"{took:.1f} s for a {budget:.0f} s budget"
    assert len(r.history) == r.settings["freeze_epochs"] + r.settings["budget_plan"]["epochs"]
