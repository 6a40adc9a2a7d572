import json
import re
import subprocess
import sys

import pytest

from conftest import TINY
from resnets import CHAPTER, EXPERIMENTS, Results, compare, get_experiment, list_experiments, load_results, run
from resnets.models import MODELS

BOOK_FINAL = {"cnn": 0.6591, "res_cnn": 0.6678, "double_res_cnn": 0.6927, "resnet18": 0.7572, "resnet50": 0.8726}


def test_registry_is_the_chapters_five_experiments_then_the_exercises():
    assert list(CHAPTER) == list(BOOK_FINAL) == list_experiments()[:5]
    assert list_experiments()[5:] == ["resnet34", "mnist_pool", "mnist_flat", "plain20", "plain56", "res20", "res56",
                                      "speedrun-v1", "speedrun10-v1", "speedrun10-v2", "speedrun10-v3",
                                      "speedrun10-v4", "speedrun", "speedrun10"]  # fmt: skip
    assert all(not EXPERIMENTS[n].book_accuracy for n in list_experiments()[5:])
    for name, acc in BOOK_FINAL.items():
        e = get_experiment(name)
        assert e.model in MODELS
        assert e.book_accuracy[-1] == acc and len(e.book_accuracy) == e.epochs
        assert e.lr == 3e-3 and e.bs == 128
    r50 = EXPERIMENTS["resnet50"]
    assert (r50.epochs, r50.presize, r50.size, r50.data) == (20, 320, 224, "imagenette-320")
    assert max(r50.book_accuracy) == 0.8759
    assert all((e.epochs, e.presize, e.size, e.data) == (5, 160, 128, "imagenette-160")
               for n, e in EXPERIMENTS.items() if n in CHAPTER[:4])  # fmt: skip


def test_experiments_are_frozen():
    with pytest.raises(AttributeError):
        EXPERIMENTS["cnn"].epochs = 1


@pytest.mark.parametrize("name", list(BOOK_FINAL))
def test_each_experiment_runs_from_python(name, imagenette, tmp_path):
    r = run(name, data=imagenette, out=tmp_path / name, seed=0, progress=False, num_workers=0, **TINY)
    assert r.finished and len(r.history) == 1
    h = r.history[0]
    assert set(h) >= {"epoch", "train_loss", "valid_loss", "accuracy", "top_5_accuracy", "time"}
    assert h["top_5_accuracy"] == 1.0, "2 classes: the target is always in the top 5"
    assert 0 <= h["accuracy"] <= 1 and h["time"] > 0
    saved = load_results(tmp_path / name)
    assert saved.history == r.history and saved.seed == 0
    assert saved.settings["size"] == 32 and saved.settings["n_train"] == 16 and saved.settings["epochs"] == 1
    assert set(saved.versions) >= {"resnets", "fastai", "torch"} and saved.device.startswith("cpu")
    assert saved.book["accuracy"][-1] == BOOK_FINAL[name]
    modes = {f: (tmp_path / name / f).stat().st_mode & 0o777 for f in ("results.json", "results.png", "checkpoint.pth")}
    assert len(set(modes.values())) == 1, f"one writer, one set of permissions: {modes}"
    png = (tmp_path / name / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_results_written_after_each_epoch(imagenette, tmp_path, monkeypatch):
    # An interrupted run keeps its finished epochs: stop training inside epoch 2 and look at the file.
    from resnets import callbacks

    class Stop(Exception):
        pass

    seen = []
    real_after_epoch = callbacks.RunHistory.after_epoch

    def after_epoch(self):
        real_after_epoch(self)
        seen.append(json.loads((tmp_path / "r" / "results.json").read_text()))
        if self.epoch == 1:
            raise Stop("interrupted in epoch 2")

    monkeypatch.setattr(callbacks.RunHistory, "after_epoch", after_epoch)
    with pytest.raises(Stop):
        run("cnn", data=imagenette, out=tmp_path / "r", progress=False, num_workers=0, **{**TINY, "epochs": 3})
    assert [len(s["history"]) for s in seen] == [1, 2]
    assert not seen[-1]["finished"]
    assert "[unfinished]" in load_results(tmp_path / "r").summary()


def test_a_second_run_does_not_overwrite_the_first(imagenette, tmp_path):
    run("cnn", data=imagenette, out=tmp_path / "r", progress=False, num_workers=0, **TINY)
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run("cnn", data=imagenette, out=tmp_path / "r", progress=False, num_workers=0, **TINY)


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs must be an integer >= 1"), (dict(size=8), "size must be an integer >= 16"),
    (dict(bs=0), "bs must"), (dict(lr=0.0), "lr must be a number > 0"), (dict(lr=-1e-3), "lr must"),
    (dict(subset=0), "subset must"), (dict(label_smoothing=1.0), "label_smoothing must"),
    (dict(mixup=-0.1), "mixup must"), (dict(opt="sgd"), "unknown opt 'sgd': choose one of adam, ranger"),
    (dict(schedule="cos"), "unknown schedule"), (dict(init="x", schedule="flat_cos"), "leave --schedule out"),
])  # fmt: skip
def test_bad_options(kw, match, tree):
    with pytest.raises(ValueError, match=match):
        run("cnn", data=tree, save=False, progress=False, **kw)


def test_one_record_holds_every_setting_and_overrides_are_checked_once():
    from dataclasses import fields

    from resnets import OPTIONS, Experiment, configure

    assert set(OPTIONS) == {f.name for f in fields(Experiment)} - {"name", "title", "book_accuracy",
                                                                     "book_valid_loss", "book_epoch_time"}
    exp = configure("res_cnn", verbose=False, epochs=2, fast_data=True, precision="fp32", size=None)
    assert (exp.epochs, exp.fast_data, exp.precision, exp.size) == (2, True, "fp32", 128), "None keeps the default"
    assert configure(exp, verbose=False) == exp, "a configured record passes through"
    with pytest.raises(ValueError, match=r"unknown setting epoch: the settings are model, width, stem, zero_gamma, "
                                         r"init, data, presize, size"):  # fmt: skip
        configure("cnn", epoch=3)
    with pytest.raises(ValueError, match="unknown settings fastdata, sise"):
        run("cnn", fastdata=True, sise=64)
    with pytest.raises(ValueError, match="unknown model"):
        configure("cnn", model="resnet19")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Experiment("x", model="cnn", precision="fp8")  # the record checks itself, however it is made


def test_one_rule_for_presize_and_size(capsys):
    from resnets import configure

    exp = configure("resnet18", size=192)  # larger than the chapter's presize: the experiment's ratio, said aloud
    assert (exp.presize, exp.size) == (240, 192) and "presize 240 for size 192" in capsys.readouterr().out
    assert configure("resnet18", size=64, presize=80).presize == 80, "an explicit presize is kept"
    with pytest.raises(ValueError, match=r"size \(64\) is larger than presize \(40\): use a presize of at least 64"):
        configure("resnet18", size=64, presize=40)  # an explicit presize is never replaced


def test_cli_options_are_made_from_the_record():
    from dataclasses import fields

    from resnets import OPTIONS, Experiment
    from resnets.cli import parser

    helps = {f.name: f.metadata["help"] for f in fields(Experiment) if f.name in OPTIONS}
    text = " ".join(resnets_cli("run", "--help").stdout.split())
    for name in OPTIONS:
        flag = "--workers" if name == "num_workers" else "--" + name.replace("_", "-")
        assert flag in text and " ".join(helps[name].split())[:30] in text, name
    args = parser().parse_args(["run", "cnn", "--epochs", "3", "--no-zero-gamma"])
    assert {k for k in vars(args) if k in OPTIONS} == {"epochs", "zero_gamma"}, "only what the user gave"
    study = parser().parse_args(["study", "regularisation", "--fast-data", "--size", "32"])
    assert (study.fast_data, study.size) == (True, 32)


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cnn, res_cnn, double_res_cnn, resnet18, resnet50, resnet34, mnist_pool"):
        run("resnet19")


def _results(acc, n=5):
    history = [{"epoch": i, "train_loss": 1.0, "valid_loss": 1.0, "accuracy": acc, "time": 10.0} for i in range(n)]
    return Results("cnn", {"size": 128}, 0, history=history, device="cpu", book=EXPERIMENTS["cnn"].book)


def test_summary_and_compare_against_the_book(tmp_path):
    r = _results(0.7000)
    assert r.book_accuracy == 0.6591
    assert "accuracy 0.7000 after 5 epoch(s)" in r.summary() and "(+4.1 points)" in r.summary()
    assert _results(0.5, n=2).book_accuracy == 0.5078  # compared at the same epoch
    assert _results(0.5, n=8).book_accuracy == 0.6591  # longer than the book: its final epoch
    r.save(tmp_path / "a")
    table = compare([tmp_path / "a", _results(0.6)])
    lines = table.splitlines()
    assert len(lines) == 4 and "+4.1" in lines[2] and "-5.9" in lines[3]


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results at"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a resnets results file"):
        load_results(tmp_path)


def resnets_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_cli_list():
    p = resnets_cli("list")
    assert p.returncode == 0
    for name, acc in BOOK_FINAL.items():
        assert name in p.stdout and f"{acc:.4f}" in p.stdout


@pytest.mark.parametrize("name", list(BOOK_FINAL))
def test_each_experiment_runs_from_the_cli(name, imagenette, tmp_path):
    p = resnets_cli("run", name, "--data", imagenette, "--classes", 2, "--subset", 8, "--size", 32, "--presize", 40,
                    "--bs", 8, "--epochs", 1, "--workers", 0, "--out", tmp_path / "run")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "resnets: training in fp32 on cpu" in p.stdout
    assert f"{name}: accuracy" in p.stdout and "not compared with the book (settings differ" in p.stdout
    r = load_results(tmp_path / "run")
    assert r.finished and r.settings["argv"][-2:] == ["--out", str(tmp_path / "run")]
    assert (tmp_path / "run" / "results.png").stat().st_size > 5000
    if name == "cnn":  # compare reads what run wrote
        c = resnets_cli("compare", tmp_path / "run")
        assert c.returncode == 0 and str(tmp_path / "run") in c.stdout and "not the book's settings" in c.stdout


def test_cli_lr_find(imagenette, tmp_path):
    p = resnets_cli("lr-find", "cnn", "--data", imagenette, "--classes", 2, "--subset", 16, "--size", 32,
                    "--presize", 40, "--bs", 8, "--workers", 0, "--out", tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "suggested learning rate" in p.stdout
    assert (tmp_path / "lr_find.png").stat().st_size > 5000


@pytest.mark.parametrize("args,match", [
    (["run", "resnet19"], "invalid choice: 'resnet19'.*'cnn', 'res_cnn'"),
    (["run", "cnn", "--epochs", "zero"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
])  # fmt: skip
def test_cli_usage_errors(args, match):
    p = resnets_cli(*args)
    assert p.returncode == 2
    assert re.search(match, p.stderr, re.S), p.stderr


def test_cli_bad_values_are_one_clear_line(tmp_path):
    p = resnets_cli("run", "cnn", "--epochs", 0, "--data", tmp_path, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "resnets run: error: epochs must be an integer >= 1, got 0"
    p = resnets_cli("run", "cnn", "--data", tmp_path / "missing", cwd=tmp_path)
    assert p.returncode == 2 and "no folder or file at" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists(), "a run that failed at the start leaves no empty folder"


def test_cli_training_options_reach_the_run(imagenette, tmp_path, capsys):
    from resnets.cli import main

    rc = main(["run", "res_cnn", "--data", str(imagenette), "--classes", "2", "--subset", "8", "--size", "32",
               "--presize", "40", "--bs", "8", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "r"),
               "--label-smoothing", "0.1", "--mixup", "0.4", "--no-zero-gamma", "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    s = load_results(tmp_path / "r").settings
    assert (s["label_smoothing"], s["mixup"], s["zero_gamma"], s["flip"]) == (0.1, 0.4, False, True)


@pytest.mark.parametrize("opt,schedule", [("adam", "one_cycle"), ("ranger", "flat_cos")])
def test_the_optimiser_and_the_schedule_are_the_ones_asked_for(imagenette, tmp_path, opt, schedule):
    from fastai.optimizer import Lookahead

    r = run("res_cnn", data=imagenette, out=tmp_path / "r", progress=False, num_workers=0, opt=opt,
            schedule=schedule, **{**TINY, "subset": 16, "epochs": 2, "lr": 1e-3})  # 4 batches an epoch, 8 in all
    assert isinstance(r.learn.opt, Lookahead) == (opt == "ranger")
    lrs = r.learn.recorder.lrs
    assert len(lrs) == 8
    if schedule == "flat_cos":  # the full rate for three quarters of the steps, then annealed
        assert lrs[:7] == [pytest.approx(1e-3)] * 7 and lrs[7] < 1e-3
    else:  # one-cycle warms up from lr / 25 to lr, then anneals
        assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-4
    s = load_results(tmp_path / "r").settings
    assert (s["opt"], s["schedule"]) == (opt, schedule)


def test_cli_keeps_the_traceback_of_a_bug_inside_another_library(monkeypatch, tree):
    from resnets import cli, training

    def broken(*args, **kwargs):
        import matplotlib.pyplot as plt

        plt.plot([1, 2], [1])  # matplotlib raises ValueError: not the user's fault, so not a one-liner

    monkeypatch.setattr(training, "run", broken)
    with pytest.raises(ValueError, match="same first dimension"):
        cli.main(["run", "cnn", "--data", str(tree)])
    monkeypatch.undo()
    assert cli.main(["run", "cnn", "--epochs", "0", "--data", str(tree)]) == 2  # our own check: one line
