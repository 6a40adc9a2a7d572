"""resnets.budget: a time budget becomes a number of epochs, planned from the first one and kept."""

import time

import pytest

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
