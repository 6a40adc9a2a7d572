"""resnets.results: results files, summaries, and the comparison with the book (only when the settings are the
book's)."""

from __future__ import annotations

import pytest

from resnets import EXPERIMENTS, Results, compare, configure, load_results


def _results(folder, acc=0.7, n=5, **settings):
    history = [{"epoch": i, "train_loss": 1.0, "valid_loss": 1.0, "accuracy": acc, "time": 10.0} for i in range(n)]
    s = {"size": 128, "presize": 160, "bs": 128, "lr": 3e-3, "n_classes": 10, **settings}
    return Results("cnn", s, 0, history=history, device="cpu", book=EXPERIMENTS["cnn"].book, folder=folder)


def _cnn_results(acc, n=5):
    history = [{"epoch": i, "train_loss": 1.0, "valid_loss": 1.0, "accuracy": acc, "time": 10.0} for i in range(n)]
    return Results("cnn", {"size": 128}, 0, history=history, device="cpu", book=EXPERIMENTS["cnn"].book)


def _run(**overrides) -> Results:
    exp = configure("resnet18", verbose=False, **overrides)
    settings = {**exp.to_dict(), "source": str(exp.data), "data": "/somewhere/imagenette2-160", "n_classes": 10}
    history = [{"epoch": i, "accuracy": 0.7, "train_loss": 1.0, "valid_loss": 1.0, "time": 1.0} for i in range(5)]
    return Results("resnet18", settings, 42, history=history, book=exp.book, finished=True)


def test_compare_names_each_run_and_compares_only_like_with_like():
    small = _results("runs/cnn-small", acc=0.5, classes=3, subset=20, n_classes=3)
    table = compare([_results("runs/cnn-a"), small, _results("runs/cnn-b", n=2)])
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["run", "experiment"]
    a, s, b = lines[2:5]
    assert a.startswith("runs/cnn-a") and "0.6591" in a and "+4.1" in a
    assert s.startswith("runs/cnn-small") and s.count("\u2013") == 2 and "-17" not in s, "no 10-class comparison"
    assert "0.5078" in b, "compared at the same epoch"
    assert "runs/cnn-small: not the book's settings" in table and "3 classes (book 10)" in table
    assert "nan" not in table
    assert "not compared with the book" in small.summary() and "points" not in small.summary()


def test_summary_and_compare_against_the_book(tmp_path):
    r = _cnn_results(0.7000)
    assert r.book_accuracy == 0.6591
    assert "accuracy 0.7000 after 5 epoch(s)" in r.summary() and "(+4.1 points)" in r.summary()
    assert _cnn_results(0.5, n=2).book_accuracy == 0.5078  # compared at the same epoch
    assert _cnn_results(0.5, n=8).book_accuracy == 0.6591  # longer than the book: its final epoch
    r.save(tmp_path / "a")
    table = compare([tmp_path / "a", _cnn_results(0.6)])
    lines = table.splitlines()
    assert len(lines) == 4 and "+4.1" in lines[2] and "-5.9" in lines[3]


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results at"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a resnets results file"):
        load_results(tmp_path)


def test_the_book_s_own_settings_are_compared():
    r = _run(fast_data=True, precision="fp32", seed=1, compile=True)  # the pipeline and the machine's side do not count
    assert r.book_differences() == [] and r.book_accuracy == pytest.approx(0.7572)
    assert "book: 0.7572" in r.summary()
    r.settings["bs"] = 128  # what a run records when its batch size was left open (None): the chapter's
    assert r.book_differences() == []
    r.settings["bs"] = 64
    assert r.book_differences() == ["bs 64 (book 128)"]


@pytest.mark.parametrize("overrides, named", [
    (dict(data="imagewoof-160"), "data imagewoof-160"), (dict(holdout=0.1), "holdout 0.1"),
    (dict(width=0.5), "width 0.5"), (dict(model="resnet34"), "model resnet34"), (dict(stem=(32, 64)), "stem"),
    (dict(augment="light"), "augment light"), (dict(opt="ranger"), "opt ranger"),
    (dict(schedule="flat_cos"), "schedule flat_cos"), (dict(sizes=(64, 128)), "sizes"), (dict(ema=0.99), "ema"),
    (dict(recalibrate_bn=True), "recalibrate_bn"), (dict(test_size=144, presize=160), "test_size 144"),
])
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


def test_class_names_the_font_lacks_are_one_line_not_a_warning_per_glyph(tmp_path, capsys):
    "Found in a trial: unicode class names gave a wall of matplotlib 'Glyph ... missing' warnings."
    import warnings

    import matplotlib.pyplot as plt

    from resnets.results import save_figure

    fig, ax = plt.subplots()
    ax.set_xticks([0, 1], ["猫", "犬"])
    ax.set_title("猫 / 犬")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_figure(fig, tmp_path / "cm.png")
    plt.close(fig)
    assert not [w for w in caught if "Glyph" in str(w.message)]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "cm.png: 2 character(s)" in out and "font.family" in out
    assert (tmp_path / "cm.png").stat().st_size > 0
