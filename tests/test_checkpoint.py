"""resnets.checkpoint: nothing lost. A killed run resumes to the history of an uninterrupted one; the optimiser
state goes where fit puts the model (a GPU) and the fp16 loss scaler carries on."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import MixedPrecision

from conftest import TINY, curve, make_tree
from resnets import InputError, checkpoint, load_results, run, training
from resnets.callbacks import Checkpoint
from resnets.checkpoint import CHECKPOINT, LEGACY_CHECKPOINT, find_checkpoint, load_checkpoint, restore_model


class _StopAfter(Callback):
    "Ends the fit after `n` epochs, once the checkpoint of the last is saved (an interrupted run, minus the kill)."

    order = Checkpoint.order + 2  # after _Probe too

    def __init__(self, n):
        self.n = n

    def after_epoch(self):
        if self.epoch + 1 == self.n:
            raise CancelFitException()


class _Probe(Callback):
    """Notes where the model and the optimiser state are, and the loss scaler's state, right after the
    Checkpoint's `before_fit` (`stop`: then ends the fit); and the loss scale after every epoch."""

    order = Checkpoint.order + 1

    def __init__(self, stop=False):
        self.stop, self.scales = stop, {}

    def before_fit(self):
        self.model_device = next(self.model.parameters()).device
        self.state_devices = {v.device for st in self.opt.state.values() for v in st.values() if torch.is_tensor(v)}
        scaler = getattr(self.learn, "scaler", None)
        self.scaler_state = scaler.state_dict() if scaler is not None else None
        if self.stop:
            raise CancelFitException()

    def after_epoch(self):
        if getattr(self.learn, "scaler", None) is not None:
            self.scales[self.epoch] = self.learn.scaler.get_scale()


class _CPUScaler(MixedPrecision):
    """fastai's MixedPrecision with a CPU stand-in for its CUDA GradScaler: a new one in every `before_fit`
    (as MixedPrecision makes), doubling its scale at every step; no autocast (fp32 on CPU)."""

    def before_fit(self):
        self.autocast = torch.autocast("cpu", enabled=False)
        self.learn.scaler, self.scales = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1), []


def _with(monkeypatch, *cbs, device=None):
    "Make `run` train with `cbs` added to its Learner, on data that reports `device` if given."
    real = training.build

    def build(*a, **k):
        learn, exp = real(*a, **k)
        if device is not None:
            learn.dls.device = device
        learn.add_cbs(cbs)
        return learn, exp

    monkeypatch.setattr(training, "build", build)


def _interrupted_run(imagenette, out, monkeypatch, *cbs, **kw):
    "Train 1 of 2 epochs in `out` (its checkpoint after epoch 1), as if killed then."
    with monkeypatch.context() as m:
        _with(m, _StopAfter(1), *cbs)
        run("cnn", data=imagenette, out=out, progress=False, num_workers=0, **{**TINY, "epochs": 2}, **kw)
    assert load_checkpoint(out)["epoch"] == 0


class _SetScale(Callback):
    "Gives the loss scaler a scale no new GradScaler starts at, before the Checkpoint saves the epoch."

    order = Checkpoint.order - 1

    def after_epoch(self):
        self.learn.scaler.update(new_scale=3.0 * 2**10)


SETTINGS = ["--classes", "2", "--subset", "32", "--size", "32", "--presize", "40", "--bs", "8", "--epochs", "4",
            "--workers", "0", "--seed", "1", "--no-progress"]  # fmt: skip


def _run_cli(data, out, *extra, **kw):
    cmd = [sys.executable, "-m", "resnets", "run", "cnn", "--data", str(data), *SETTINGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_optimiser_state_is_resumed_on_the_device_fit_moves_the_model_to(imagenette, tmp_path, monkeypatch):
    _interrupted_run(imagenette, tmp_path / "r", monkeypatch, precision="fp32")  # no autocast: meta has none
    # A stand-in for a GPU on CPU: data loaders on the meta device, so fastai's TrainEvalCallback moves the model
    # there in before_fit, after `Checkpoint.restore` ran (stopped before any batch: meta tensors hold no values).
    probe = _Probe(stop=True)
    _with(monkeypatch, probe, device=torch.device("meta"))
    run("cnn", data=imagenette, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp32",
        **{**TINY, "epochs": 2})  # fmt: skip
    assert probe.model_device == torch.device("meta")
    assert probe.state_devices == {torch.device("meta")}  # not the CPU the model was on when restore ran


def test_the_loss_scaler_is_saved_and_carried_on_when_resuming(imagenette, tmp_path, monkeypatch):
    first = _Probe()
    _interrupted_run(imagenette, tmp_path / "r", monkeypatch, _CPUScaler(), first, precision="fp32")  # one scaler
    saved = load_checkpoint(tmp_path / "r")["scaler"]
    assert saved["scale"] == first.scales[0] > 2.0**10  # the scale it had grown to, not the initial one
    probe = _Probe()
    _with(monkeypatch, _CPUScaler(), probe)
    r = run("cnn", data=imagenette, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp32",
            **{**TINY, "epochs": 2})  # fmt: skip
    assert r.finished and len(r.history) == 2
    assert probe.scaler_state == saved  # the new GradScaler took the saved state before the first step
    assert load_checkpoint(tmp_path / "r")["scaler"]["scale"] == probe.scales[1] > saved["scale"]


@pytest.mark.gpu
def test_a_gpu_run_resumes_and_trains_on(imagenette, tmp_path, monkeypatch):
    _interrupted_run(imagenette, tmp_path / "r", monkeypatch, precision="fp32")
    probe = _Probe()
    _with(monkeypatch, probe)
    r = run("cnn", data=imagenette, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp32",
            **{**TINY, "epochs": 2})  # fmt: skip
    assert probe.model_device.type == "cuda" and {d.type for d in probe.state_devices} == {"cuda"}
    assert r.finished and len(r.history) == 2 and all(math.isfinite(h["train_loss"]) for h in r.history)


@pytest.mark.gpu
def test_an_fp16_gpu_run_resumes_with_its_loss_scale(imagenette, tmp_path, monkeypatch):
    first = _Probe()
    _interrupted_run(imagenette, tmp_path / "r", monkeypatch, _SetScale(), first, precision="fp16")
    saved = load_checkpoint(tmp_path / "r")["scaler"]
    assert saved["scale"] == first.scales[0] == 3.0 * 2**10
    probe = _Probe()
    _with(monkeypatch, probe)
    r = run("cnn", data=imagenette, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp16",
            **{**TINY, "epochs": 2})  # fmt: skip
    assert probe.scaler_state == saved and probe.scaler_state["scale"] != 2.0**16  # not a fresh GradScaler's
    assert r.finished and len(r.history) == 2


@pytest.mark.parametrize("opt", [["--precision", "fp32"], ["--precision", "bf16"], ["--opt", "ranger", "--schedule",
                                 "flat_cos"]], ids=["adam-fp32", "adam-bf16", "ranger-auto"])  # fmt: skip
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
    assert curve(done) == curve(uninterrupted)


def test_a_finished_run_s_checkpoint_restores_its_model(generated_run):
    "The quick tier's checkpoint check: weights-only, the last epoch's, and a fresh learner given it predicts alike."
    state = load_checkpoint(generated_run.folder)
    assert state["epoch"] == len(generated_run.history) - 1 == 1 and state["vocab"] == ["cat", "dog"]
    fresh, _ = training.build("cnn", data=generated_run.settings["data"], size=32, presize=40, bs=4, num_workers=0,
                              verbose=False)  # fmt: skip
    restore_model(fresh, state)
    xb, _ = generated_run.learn.dls.valid.one_batch()
    with torch.no_grad():
        ours, theirs = fresh.model.eval()(xb), generated_run.learn.model.eval()(xb)
    assert torch.equal(ours, theirs)


def test_the_checkpoint_file_is_safetensors_and_its_tree_comes_back_as_it_was(tmp_path, monkeypatch):
    "Tensors (views, bf16, fastai's subclasses) and plain values (tuples, int keys, NaN) round-trip; no pickle read."
    from fastai.torch_core import TensorImage
    from safetensors import safe_open

    base = torch.arange(12.0).reshape(3, 4)
    tree = {"model": {"w": base[:, 1], "b": torch.ones(2, dtype=torch.bfloat16)}, "img": TensorImage(torch.zeros(2)),
            "random": (3, tuple(range(5)), None), "opt": {0: {"step": 7, "do_wd": True}}, "loss": float("nan"),
            "history": [{"epoch": 0, "accuracy": 0.5}], "__tensor__": "a key that looks like a marker"}  # fmt: skip
    path = tmp_path / CHECKPOINT
    checkpoint._atomic_save(tree, path)
    with safe_open(str(path), framework="pt") as f:  # any safetensors reader opens it: its tensors by number
        assert len(f.keys()) == 3 and checkpoint.FORMAT in f.metadata()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("this version's checkpoint read by torch.load"))
    back = load_checkpoint(tmp_path)
    assert torch.equal(back["model"]["w"], base[:, 1]) and back["model"]["b"].dtype == torch.bfloat16
    assert type(back["img"]) is torch.Tensor and back["random"] == (3, (0, 1, 2, 3, 4), None)
    assert back["opt"] == {0: {"step": 7, "do_wd": True}} and math.isnan(back["loss"])
    assert back["history"] == tree["history"] and back["__tensor__"] == tree["__tensor__"]


def test_a_checkpoint_of_an_earlier_version_still_resumes(tmp_path, monkeypatch):
    "resnets 0.2 wrote checkpoint.pth (torch's format, weights-only): a run resumes from it to the same history."
    data = make_tree(tmp_path / "data", n_train=8, n_valid=4)
    kw = dict(data=data, size=32, presize=40, bs=4, epochs=2, progress=False, num_workers=0, seed=0)
    ref = run("cnn", out=tmp_path / "ref", **kw)
    with monkeypatch.context() as m:
        _with(m, _StopAfter(1))
        run("cnn", out=tmp_path / "old", **kw)
    old = tmp_path / "old"
    torch.save(load_checkpoint(old), old / LEGACY_CHECKPOINT)  # the same tree, as the earlier version saved it
    (old / CHECKPOINT).unlink()
    assert find_checkpoint(old) == old / LEGACY_CHECKPOINT
    done = run("cnn", out=old, resume=True, **kw)
    assert done.finished and curve(done) == curve(ref)
    assert find_checkpoint(old) == old / CHECKPOINT and not (old / LEGACY_CHECKPOINT).exists(), "one checkpoint"


def test_resuming_over_other_images_is_refused(tmp_path, monkeypatch):
    "A trial replaced an image, and swapped two between classes (same counts): resuming carried on over mixed data."
    import shutil

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "d", n_train=3, n_valid=2)
    kw = dict(size=32, presize=32, bs=2, epochs=1, progress=False, num_workers=0, seed=0)
    run("cnn", data=root, out=tmp_path / "r", **kw)
    resume = lambda data: run("cnn", data=data, out=tmp_path / "r", resume=True, **kw)  # noqa: E731
    moved = shutil.copytree(root, tmp_path / "elsewhere")  # copied: new times, the same images
    assert resume(moved).finished, "a moved or copied data folder is still the data"
    a, b = root / "train" / "cat" / "cat0.jpg", root / "train" / "dog" / "dog0.jpg"
    tmp = a.with_name("swap")
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)  # swapped between classes, times kept
    with pytest.raises(InputError, match="its images are not those it was trained on"):
        resume(root)
    os.rename(a, tmp), os.rename(b, a), os.rename(tmp, b)
    assert resume(root).finished
    data = bytearray(a.read_bytes())  # replaced by an image of the same size
    data[-100] ^= 0xFF
    a.write_bytes(bytes(data))
    with pytest.raises(InputError, match="its images are not those"):
        resume(root)
