"""resnets.budget: a time budget becomes a number of epochs, planned from the first one and kept."""

import time

import pytest
import torch

from resnets import InputError, run


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


def test_a_budget_on_generated_images_is_planned_and_recorded(tree, tmp_path):
    "The quick tier's budget check: the plan's epochs are the run's, and a budget below one epoch is refused."
    kw = dict(data=tree, size=32, presize=40, bs=4, progress=False, num_workers=0)
    r = run("cnn", out=tmp_path / "b", budget=6.0, **kw)
    plan = r.settings["budget_plan"]
    assert plan["epochs"] == r.settings["epochs"] == len(r.history) >= 1
    assert plan["predicted_s"] > 0
    with pytest.raises(InputError, match=r"too small for one epoch"):
        run("cnn", save=False, budget=0.01, **kw)


class _Loader(list):
    "A loader of `n` batches (its length is all the planner reads of it; the timings are faked)."


def _plan(monkeypatch, n_batches: int, budget: float = 20.0, **overrides):
    "plan_budget on a learner whose steps take 0.1 s and whose validation 0.2 s, `n_batches` per epoch."
    from types import SimpleNamespace

    from resnets import budget as planner
    from resnets.recipes import configure

    monkeypatch.setattr(planner, "_time_steps", lambda learn, size: 0.1)
    monkeypatch.setattr(planner, "_time_validation", lambda learn, size: 0.2)
    monkeypatch.setattr(planner, "set_image_size", lambda dls, size: None)
    dls = SimpleNamespace(train=_Loader([None] * n_batches), train_ds=[None] * 64, valid_ds=[None] * 32)
    exp = configure("cnn", verbose=False, budget=budget, **overrides)
    return planner.plan_budget(SimpleNamespace(dls=dls), exp, spent=0.0)


def test_the_budget_plan_is_the_most_epochs_that_fit(monkeypatch):
    """Exact numbers for the planner's sum: an epoch is 0.1 s x batches + 0.5 s + 0.22 s of validation (0.2 s and
    10 %), and the run ends with one more validation pass and 2 s (TTA or the interpretation): 2.22 s."""
    exp, plan = _plan(monkeypatch, n_batches=10)  # 1.72 s per epoch: 10 epochs take 19.42 s, 11 take 21.14 s
    assert exp.epochs == plan["epochs"] == 10 and plan["predicted_s"] == pytest.approx(19.42, abs=0.05)
    exp, plan = _plan(monkeypatch, n_batches=20)  # 2.72 s per epoch: 6 take 18.54 s, 7 take 21.26 s
    assert exp.epochs == 6 and plan["predicted_s"] == pytest.approx(18.54, abs=0.05)
    exp, plan = _plan(monkeypatch, n_batches=10, valid_last=1)  # 1.5 s an epoch, one validation: 11 take 18.94 s
    assert exp.epochs == 11 and plan["predicted_s"] == pytest.approx(18.94, abs=0.05)
    with pytest.raises(InputError, match="at least --budget 4"):  # one epoch: 1.72 + 2.22 = 3.94 s
        _plan(monkeypatch, n_batches=10, budget=3.9)
    # fine-tuning first trains the head alone for freeze_epochs (a whole epoch's time each): 1.72 s + 9 epochs
    exp, plan = _plan(monkeypatch, n_batches=10, init="runs/earlier", freeze_epochs=1)
    assert exp.epochs == 9 and plan["predicted_s"] == pytest.approx(19.42, abs=0.05)


def test_the_model_runs_on_the_datas_device_outside_a_fit(monkeypatch):
    """The budget's timing runs the model before any fit has moved it (as TTA or BatchNorm re-estimation called
    directly do, through the same `evaluate.on_data_device`): on a GPU its batches
    are on CUDA and the model still on the CPU (a device-mismatch error). Here the data's device is torch's "meta"
    device, and every forward pass checks that its input and its weights are on the same device."""
    import contextlib
    from types import SimpleNamespace

    from resnets import budget

    meta = torch.device("meta")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((args[0].device, next(m.parameters()).device)))
    batch = (torch.zeros(2, 3, 8, 8, device=meta), torch.zeros(2, dtype=torch.long, device=meta))
    learn = SimpleNamespace(model=model, dls=SimpleNamespace(device=meta, train=[batch] * 3, valid=[batch] * 2,
                                                             valid_ds=[None] * 4))
    monkeypatch.setattr(budget, "device_autocast", lambda learn: contextlib.nullcontext())
    monkeypatch.setattr(budget, "set_image_size", lambda dls, size: None)
    budget._time_steps(learn, 8)
    budget._time_validation(learn, 8)
    assert len(seen) == 3 + 2 and all(x == meta and w == meta for x, w in seen), seen
