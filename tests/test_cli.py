"""resnets.cli: a new user's first hour at the command line. Options made from the record, one-line errors before
torch loads, Ctrl-C and the way back, readable logs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import BOOK_FINAL
from resnets import InputError, load_results
from resnets.checkpoint import CHECKPOINT
from resnets.cli import main
from resnets.precision import choose_precision

TINY_CLI = ["--classes", "2", "--subset", "16", "--size", "32", "--presize", "40", "--bs", "8", "--num-workers", "0",
            "--seed", "1"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)




def resnets_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(imagenette, tmp_path):
    out = tmp_path / "r"
    args = ["run", "cnn", "--data", str(imagenette), *TINY_CLI, "--epochs", "40", "--out", str(out)]
    # a shell that starts the tests in the background (nohup ... &) hands them SIGINT ignored: restore the default
    p = subprocess.Popen([sys.executable, "-m", "resnets", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / CHECKPOINT).exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)  # 40 short epochs: still training, on a fast machine too
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    resume = stderr.split("continue with: ", 1)[1].strip()
    assert resume.startswith("resnets run cnn") and resume.endswith(f"--out {out} --resume"), resume
    assert (out / CHECKPOINT).exists() and not load_results(out).finished

    # the same command again: the folder holds an unfinished run, and the error says how to continue it
    again = _cli(*args)
    assert again.returncode == 2 and "holds an unfinished run" in again.stderr and resume in again.stderr

    # the printed command continues it; the resumed epochs are not printed again
    p = _cli(*resume.split()[1:])
    assert p.returncode == 0, p.stderr
    assert load_results(out).finished and len(load_results(out).history) == 40
    rows = [line for line in p.stdout.splitlines() if re.match(r"\s*\d+\s+\d", line)]
    done_before = 40 - len(rows)
    assert 1 <= done_before and [int(r.split()[0]) for r in rows] == list(range(done_before, 40)), p.stdout


@pytest.mark.slow  # starts a subprocess
def test_resume_without_a_folder_speaks_command_line(tmp_path):
    p = _cli("run", "cnn", "--resume", cwd=tmp_path)
    assert p.returncode == 2
    assert "--resume continues a run: add --out FOLDER" in p.stderr and "out=" not in p.stderr, p.stderr


def test_a_log_file_gets_a_header_and_rounded_values(imagenette, tmp_path):
    p = _cli("run", "cnn", "--data", imagenette, *TINY_CLI, "--epochs", "2", "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    (head,) = [i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "train_loss"]]
    assert lines[head].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]  # 2 classes: no top-5
    for epoch, row in enumerate(lines[head + 1 : head + 3]):
        cells = row.split()
        assert cells[0] == str(epoch) and all(re.fullmatch(r"\d+\.\d{4}", c) for c in cells[1:4]), row
    assert "[0, " not in p.stdout, "no Python lists"


def test_cli_lr_find_saves_its_plot_without_progress(imagenette, tmp_path):
    "One lr-find from the command line (CI runs one, not two): the suggestion last, no bars, the plot saved."
    p = _cli("lr-find", "cnn", "--data", imagenette, *TINY_CLI, "--no-progress", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("suggested learning rate") and len(p.stdout) < 1000, p.stdout
    assert (tmp_path / "lr_find.png").stat().st_size > 5000


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_needs_k_of_at_least_one(k, tmp_path):
    p = _cli("predict", tmp_path / "m.resnets", tmp_path / "x.jpg", "-k", k)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "k must be an integer >= 1" in p.stderr


@pytest.mark.slow  # starts a subprocess
def test_help_and_bad_options_answer_without_importing_torch():
    code = ("import sys, resnets.cli as c\n"
            "try:\n    c.main(['run', 'cnn', '--epochs', 'zero'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'fastai' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["False", "False"], p.stdout + p.stderr
    assert "invalid int value" in p.stderr


def test_distributed_without_accelerate_says_what_to_install(monkeypatch, tree):
    from resnets import training

    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if it were not installed
    monkeypatch.setattr(training, "num_distrib", lambda: 2)
    with pytest.raises(InputError, match=r"pip install 'resnets\[distributed\]'"):
        training.run("cnn", data=tree, save=False)


def test_cli_options_are_made_from_the_record(capsys):
    from dataclasses import fields

    from resnets import OPTIONS, Experiment
    from resnets.cli import main, parser

    helps = {f.name: f.metadata["help"] for f in fields(Experiment) if f.name in OPTIONS}
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in OPTIONS:
        flag = "--" + name.replace("_", "-")
        assert flag in text and " ".join(helps[name].split())[:30] in text, name
    args = parser().parse_args(["run", "cnn", "--epochs", "3", "--no-zero-gamma"])
    assert {k for k in vars(args) if k in OPTIONS} == {"epochs", "zero_gamma"}, "only what the user gave"
    study = parser().parse_args(["study", "regularisation", "--fast-data", "--size", "32"])
    assert (study.fast_data, study.size) == (True, 32)


@pytest.mark.slow  # starts a subprocess
def test_cli_list():
    p = resnets_cli("list")
    assert p.returncode == 0
    for name, acc in BOOK_FINAL.items():
        assert name in p.stdout and f"{acc:.4f}" in p.stdout


@pytest.mark.parametrize("name", ["cnn", "resnet50"])  # (every experiment runs from Python: test_training.py)
def test_experiments_run_from_the_cli(name, imagenette, tmp_path):
    p = resnets_cli("run", name, "--data", imagenette, "--classes", 2, "--subset", 8, "--size", 32, "--presize", 40,
                    "--bs", 8, "--epochs", 1, "--num-workers", 0, "--out", tmp_path / "run")
    assert p.returncode == 0, p.stderr
    assert f"resnets: {choose_precision('auto', 'cpu')[1]}" in p.stdout  # fp32, or bf16 where the CPU has it
    assert f"{name}: accuracy" in p.stdout and "not compared with the book (settings differ" in p.stdout
    r = load_results(tmp_path / "run")
    assert r.finished and r.settings["argv"][-2:] == ["--out", str(tmp_path / "run")]
    assert (tmp_path / "run" / "results.png").stat().st_size > 5000
    if name == "cnn":  # compare reads what run wrote
        c = resnets_cli("compare", tmp_path / "run")
        assert c.returncode == 0 and str(tmp_path / "run") in c.stdout and "not the book's settings" in c.stdout




@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("args,match", [
    (["run", "resnet19"], "invalid choice: 'resnet19'.*'cnn', 'res_cnn'"),
    (["run", "cnn", "--epochs", "zero"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_usage_errors(args, match):
    p = resnets_cli(*args)
    assert p.returncode == 2
    assert re.search(match, p.stderr, re.S), p.stderr


@pytest.mark.slow  # starts a subprocess
def test_cli_bad_values_are_one_clear_line(tmp_path):
    p = resnets_cli("run", "cnn", "--epochs", 0, "--data", tmp_path, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "resnets run: error: epochs must be an integer >= 1, got 0"
    p = resnets_cli("run", "cnn", "--data", tmp_path / "missing", cwd=tmp_path)
    assert p.returncode == 2 and "no folder or file at" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists(), "a run that failed at the start leaves no empty folder"


def test_cli_training_options_reach_the_run(imagenette, tmp_path, capsys):
    from resnets.cli import main

    rc = main(["run", "res_cnn", "--data", str(imagenette), "--classes", "2", "--subset", "8", "--size", "32",
               "--presize", "40", "--bs", "8", "--epochs", "1", "--num-workers", "0", "--out", str(tmp_path / "r"),
               "--label-smoothing", "0.1", "--mixup", "0.4", "--no-zero-gamma", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    s = load_results(tmp_path / "r").settings
    assert (s["label_smoothing"], s["mixup"], s["zero_gamma"], s["flip"]) == (0.1, 0.4, False, True)


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


def test_main_in_process_leaves_the_environment_as_it_was(monkeypatch, capsys):
    "The data hint main() sets for its own command does not leak into the next call (a notebook, the tests)."
    import os

    from resnets.cli import main

    monkeypatch.delenv("RESNETS_DATA_HINT", raising=False)
    assert main(["list"]) == 0
    assert "RESNETS_DATA_HINT" not in os.environ
    monkeypatch.setenv("RESNETS_DATA_HINT", "make run DATA=/path/to/{folder}")
    main(["list"])
    assert os.environ["RESNETS_DATA_HINT"] == "make run DATA=/path/to/{folder}"


def test_list_shows_each_recipe_once_under_its_plain_name(capsys):
    "Found in a trial: seven speedrun versions cluttered `resnets list`; the plain names run the latest."
    assert main(["list"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line[0].isspace()]
    assert "speedrun" in rows and "speedrun10" in rows and "cnn" in rows
    assert not [r for r in rows if re.fullmatch(r"speedrun\d*-v\d+", r)], rows
    assert main(["list", "--all"]) == 0
    out = capsys.readouterr().out
    assert "speedrun10-v1" in out and "speedrun10-v4" in out and "(= speedrun10-v5)" in out


def test_valid_pct_on_data_with_its_own_split_is_said_not_ignored(tree, monkeypatch, capsys):
    "Found in a trial: --valid-pct 0.5 on a folder with train/ and val/ was silently ignored."
    from types import SimpleNamespace

    from resnets import training

    monkeypatch.setattr(training, "run", lambda exp, **kw: SimpleNamespace(folder=None))  # the checks, no training
    assert main(["run", "cnn", "--data", str(tree), "--valid-pct", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "--valid-pct 0.5 is not used" in out and "own train/ and validation folders" in out
    assert main(["run", "cnn", "--data", str(tree)]) == 0
    assert "valid-pct" not in capsys.readouterr().out, "said only when asked for"


def test_a_csv_s_missing_label_column_is_named_before_anything_loads(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.jpg,cat\n")
    assert main(["run", "cnn", "--data", str(csv), "--label-col", "breed"]) == 2
    assert "no column 'breed'" in capsys.readouterr().err


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("args", [["export", "/no/run"], ["interpret", "/no/run"], ["push", "/no/run", "a/b"],
                                  ["predict", "/no/model.resnets", "x.jpg"]])
def test_a_missing_run_folder_or_model_file_is_named_before_torch_loads(args):
    "Found in a trial: these came after torch loaded (7 s idle, up to 55 s on a loaded machine)."
    code = f"import sys; from resnets.cli import main; rc = main({args!r}); print('torch' in sys.modules, rc)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["False", "2"], p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and ("no run folder" in p.stderr or "no model file" in p.stderr)


def test_names_are_printed_on_one_line_with_escapes_shown():
    "Found in a trial: class names with a newline or a terminal escape were printed raw."
    from resnets.errors import printable as _printable

    assert _printable("cat\nrm -rf") == "cat\\nrm -rf" and _printable("red\x1b[31m") == "red\\x1b[31m"
    assert _printable("caf\udce9.jpg") == "caf\\udce9.jpg" and _printable("猫 chat") == "猫 chat"


def test_a_renamed_flag_still_works_and_gives_its_new_name(capsys):
    "--workers (before --num-workers) sets the same setting, with a line naming the new flag; the docs show the new."
    from resnets.cli import parser
    from resnets.reference import reference

    assert parser().parse_args(["run", "cnn", "--workers", "3"]).num_workers == 3
    assert "--workers is now --num-workers" in capsys.readouterr().err
    assert parser().parse_args(["run", "cnn", "--num-workers", "2"]).num_workers == 2
    assert capsys.readouterr().err == ""
    assert "`--num-workers` N" in reference() and "`--workers`" not in reference()
