"""Nothing lost: kill and resume, same seed same losses, NaN and out-of-memory guards."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from conftest import TINY
from resnets import InputError, load_results, run
from resnets.checkpoint import CHECKPOINT, TrainingDiverged, load_checkpoint

SETTINGS = ["--classes", "2", "--subset", "32", "--size", "32", "--presize", "40", "--bs", "8", "--epochs", "4",
            "--workers", "0", "--seed", "1", "--no-progress"]  # fmt: skip


def _run_cli(data, out, *extra, **kw):
    cmd = [sys.executable, "-m", "resnets", "run", "cnn", "--data", str(data), *SETTINGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _curve(r):
    return [(h["train_loss"], h["valid_loss"], h["accuracy"]) for h in r.history]


@pytest.mark.parametrize("opt", [[], ["--opt", "ranger", "--schedule", "flat_cos"]], ids=["adam", "ranger"])
def test_a_killed_run_resumes_to_the_history_of_an_uninterrupted_one(imagenette, tmp_path, opt):
    ref = _run_cli(imagenette, tmp_path / "ref", *opt)
    assert ref.wait(600) == 0, ref.stderr.read()
    killed = tmp_path / "killed"
    p = _run_cli(imagenette, killed, *opt)
    deadline = time.time() + 600
    while not (killed / CHECKPOINT).exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # mid-epoch 2 (or while saving epoch 1): no chance to clean up
    p.wait()
    partial = load_results(killed)
    assert not partial.finished and 1 <= len(partial.history) < 4, "killed before the end"
    assert load_checkpoint(killed)["epoch"] + 1 <= len(partial.history)
    p = _run_cli(imagenette, killed, *opt, "--resume")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "resuming" in out
    done, uninterrupted = load_results(killed), load_results(tmp_path / "ref")
    assert done.finished and len(done.history) == 4
    # CPU, same seed, state restored exactly: the same numbers, not just close ones
    assert _curve(done) == _curve(uninterrupted)


@pytest.mark.parametrize("fast_data", [False, True])
def test_the_same_seed_gives_the_same_losses(imagenette, tmp_path, fast_data):
    kw = dict(data=imagenette, progress=False, num_workers=0, fast_data=fast_data, **{**TINY, "epochs": 2})
    a, b = (run("res_cnn", out=tmp_path / n, seed=3, **kw) for n in "ab")
    assert _curve(a) == _curve(b)
    c = run("res_cnn", out=tmp_path / "c", seed=4, **kw)
    assert _curve(c) != _curve(a)


def test_resume_checks_its_settings_and_needs_a_folder(imagenette, tmp_path):
    kw = dict(data=imagenette, progress=False, num_workers=0, **TINY)
    run("cnn", out=tmp_path / "r", **kw)
    with pytest.raises(ValueError, match="lr: 0.003 then, 0.01 now"):
        run("cnn", out=tmp_path / "r", resume=True, lr=1e-2, **kw)
    with pytest.raises(ValueError, match="out=FOLDER"):
        run("cnn", resume=True, **kw)
    (tmp_path / "r" / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="remove it"):
        run("cnn", out=tmp_path / "r", resume=True, **kw)


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


def test_a_nan_loss_stops_the_run_naming_where_and_keeps_the_last_good_epoch(imagenette, tmp_path, monkeypatch):
    from resnets import training

    real = training.create_model
    monkeypatch.setattr(training, "create_model", lambda *a, **k: _NaNAfter(real(*a, **k), n=2 + 2))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 2 of 2.*lower maximum learning rate.*checkpoint"):
        run("cnn", data=imagenette, out=tmp_path / "nan", progress=False, num_workers=0, **{**TINY, "epochs": 3})
    assert load_checkpoint(tmp_path / "nan")["epoch"] == 0
    r = load_results(tmp_path / "nan")
    assert len(r.history) == 1 and not r.finished


def test_out_of_memory_names_the_batch_size(imagenette, tmp_path, monkeypatch):
    from fastai.learner import Learner

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Learner, "fit_one_cycle", oom)
    with pytest.raises(MemoryError, match=r"batch size 8 .*--bs 4 and --resume"):
        run("cnn", data=imagenette, out=tmp_path / "oom", progress=False, num_workers=0, **TINY)


def test_a_checkpoint_older_than_an_option_resumes_with_it_at_its_default():
    "Settings saved before `lr_mult` and `ema` existed compare as their defaults, not as a change."
    from dataclasses import fields

    from resnets import Experiment
    from resnets.training import _check_same_settings

    now = {f.name: f.default for f in fields(Experiment) if f.metadata.get("option")}
    saved = {k: v for k, v in now.items() if k not in ("lr_mult", "ema")}
    _check_same_settings(saved, now, "runs/old")
    with pytest.raises(InputError, match=r"cannot resume runs/old with different settings \(ema: 0.0 then, 0.99 now\)"):
        _check_same_settings(saved, {**now, "ema": 0.99}, "runs/old")
