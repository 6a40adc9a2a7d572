"""A new user's first hour at the command line: Ctrl-C and the way back, readable logs, compare, small edges."""

import re
import signal
import subprocess
import sys
import time

import pytest

from resnets import EXPERIMENTS, InputError, Results, compare, load_results
from resnets.checkpoint import CHECKPOINT

TINY_CLI = ["--classes", "2", "--subset", "16", "--size", "32", "--presize", "40", "--bs", "8", "--workers", "0",
            "--seed", "1"]  # fmt: skip


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(imagenette, tmp_path):
    out = tmp_path / "r"
    args = ["run", "cnn", "--data", str(imagenette), *TINY_CLI, "--epochs", "40", "--out", str(out)]
    # a shell that starts the tests in the background (nohup ... &) hands them SIGINT ignored: restore the default
    p = subprocess.Popen([sys.executable, "-m", "resnets", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
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


def test_resume_without_a_folder_speaks_command_line(tmp_path):
    p = _cli("run", "cnn", "--resume", cwd=tmp_path)
    assert p.returncode == 2
    assert "--resume continues a run: add --out FOLDER" in p.stderr and "out=" not in p.stderr, p.stderr


def test_a_log_file_gets_a_header_and_rounded_values(imagenette, tmp_path):
    p = _cli("run", "cnn", "--data", imagenette, *TINY_CLI, "--epochs", "2", "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    (head,) = [i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "train_loss"]]
    assert lines[head].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "top_5_accuracy", "time"]
    for epoch, row in enumerate(lines[head + 1 : head + 3]):
        cells = row.split()
        assert cells[0] == str(epoch) and all(re.fullmatch(r"\d+\.\d{4}", c) for c in cells[1:5]), row
    assert "[0, " not in p.stdout, "no Python lists"


def test_lr_find_has_no_progress(imagenette, tmp_path):
    p = _cli("lr-find", "cnn", "--data", imagenette, *TINY_CLI, "--no-progress", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("suggested learning rate") and len(p.stdout) < 1000, p.stdout


def _results(folder, acc=0.7, n=5, **settings):
    history = [{"epoch": i, "train_loss": 1.0, "valid_loss": 1.0, "accuracy": acc, "time": 10.0} for i in range(n)]
    s = {"size": 128, "presize": 160, "bs": 128, "lr": 3e-3, "n_classes": 10, **settings}
    return Results("cnn", s, 0, history=history, device="cpu", book=EXPERIMENTS["cnn"].book, folder=folder)


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


@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_needs_k_of_at_least_one(k, tmp_path):
    p = _cli("predict", tmp_path / "m.resnets", tmp_path / "x.jpg", "-k", k)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "k must be an integer >= 1" in p.stderr


def test_k_is_checked_by_the_predictor():
    from resnets.export import Predictor

    with pytest.raises(InputError, match="k must be an integer >= 1"):
        Predictor.predict(None, "x.jpg", k=0)


def test_help_and_bad_options_answer_without_importing_torch():
    code = ("import sys, resnets.cli as c\n"
            "try:\n    c.main(['run', 'cnn', '--epochs', 'zero'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'fastai' in sys.modules)")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["False", "False"], p.stdout + p.stderr
    assert "invalid int value" in p.stderr


def test_distributed_without_accelerate_says_what_to_install(monkeypatch, tree):
    from resnets import training

    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if it were not installed
    monkeypatch.setattr(training, "num_distrib", lambda: 2)
    with pytest.raises(InputError, match=r"pip install 'resnets\[distributed\]'"):
        training.run("cnn", data=tree, save=False)
