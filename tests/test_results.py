"""resnets.results: a run is compared with the book only when its settings are the book's."""

from __future__ import annotations

import pytest

from resnets import Results, configure
from resnets.cli import main


def _run(**overrides) -> Results:
    exp = configure("resnet18", verbose=False, **overrides)
    settings = {**exp.to_dict(), "source": str(exp.data), "data": "/somewhere/imagenette2-160", "n_classes": 10}
    history = [{"epoch": i, "accuracy": 0.7, "train_loss": 1.0, "valid_loss": 1.0, "time": 1.0} for i in range(5)]
    return Results("resnet18", settings, 42, history=history, book=exp.book, finished=True)


def test_the_book_s_own_settings_are_compared():
    r = _run(fast_data=True, precision="fp32", seed=1)  # the pipeline and the machine's side do not count
    assert r.book_differences() == [] and r.book_accuracy == pytest.approx(0.7572)
    assert "book: 0.7572" in r.summary()


@pytest.mark.parametrize("overrides, named", [
    (dict(data="imagewoof-160"), "data imagewoof-160"), (dict(holdout=0.1), "holdout 0.1"),
    (dict(width=0.5), "width 0.5"), (dict(model="resnet34"), "model resnet34"), (dict(stem=(32, 64)), "stem"),
    (dict(augment="light"), "augment light"), (dict(opt="ranger"), "opt ranger"),
    (dict(schedule="flat_cos"), "schedule flat_cos"), (dict(sizes=(64, 128)), "sizes"), (dict(ema=0.99), "ema"),
    (dict(recalibrate_bn=True), "recalibrate_bn"), (dict(test_size=144, presize=160), "test_size 144"),
])  # fmt: skip
def test_a_run_with_other_settings_is_not_compared_with_the_book(overrides, named):
    r = _run(**overrides)
    assert any(d.startswith(named) for d in r.book_differences()), r.book_differences()
    assert r.book_accuracy is None and "book: " not in r.summary() and "not compared with the book" in r.summary()


def test_the_data_named_by_its_folder_or_its_name_is_the_book_s():
    r = _run()
    r.settings["source"] = "imagenette-160"
    assert r.book_differences() == []
    r.settings["source"] = "imagenette-160/noisy_imagenette.csv"
    assert r.book_differences() and r.book_accuracy is None


def test_a_negative_value_is_answered_in_one_line_by_the_record(capsys):
    assert main(["run", "cnn", "--lr", "-1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lr must be a number > 0" in err


def test_an_unknown_experiment_is_one_line_with_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "nope"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "invalid choice: 'nope'" in err and "speedrun10" in err


def test_a_missing_data_folder_is_answered_before_training(capsys, tmp_path):
    assert main(["run", "cnn", "--data", str(tmp_path / "missing")]) == 2
    assert "no folder or file at" in capsys.readouterr().err


def test_lr_find_takes_only_the_options_it_uses(capsys):
    with pytest.raises(SystemExit):
        main(["lr-find", "cnn", "--budget", "10m"])
    assert "unrecognized arguments: --budget" in capsys.readouterr().err
