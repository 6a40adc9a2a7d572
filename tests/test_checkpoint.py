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
            "--num-workers", "0", "--seed", "1", "--no-progress"]


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
        **{**TINY, "epochs": 2})
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
            **{**TINY, "epochs": 2})
    assert r.finished and len(r.history) == 2
    assert probe.scaler_state == saved  # the new GradScaler took the saved state before the first step
    assert load_checkpoint(tmp_path / "r")["scaler"]["scale"] == probe.scales[1] > saved["scale"]


def _generated(tmp_path):
    "Two classes of 8 generated images each in train/ and val/: what the gpu tests train on (no data travels)."
    return make_tree(tmp_path / "data", n_train=8, n_valid=8)


@pytest.mark.gpu
def test_a_gpu_run_resumes_and_trains_on(tmp_path, monkeypatch):
    data = _generated(tmp_path)
    _interrupted_run(data, tmp_path / "r", monkeypatch, precision="fp32")
    probe = _Probe()
    _with(monkeypatch, probe)
    r = run("cnn", data=data, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp32",
            **{**TINY, "epochs": 2})
    assert probe.model_device.type == "cuda" and {d.type for d in probe.state_devices} == {"cuda"}
    assert r.finished and len(r.history) == 2 and all(math.isfinite(h["train_loss"]) for h in r.history)


@pytest.mark.gpu
def test_an_fp16_gpu_run_resumes_with_its_loss_scale(tmp_path, monkeypatch):
    data, first = _generated(tmp_path), _Probe()
    _interrupted_run(data, tmp_path / "r", monkeypatch, _SetScale(), first, precision="fp16")
    saved = load_checkpoint(tmp_path / "r")["scaler"]
    assert saved["scale"] == first.scales[0] == 3.0 * 2**10
    probe = _Probe()
    _with(monkeypatch, probe)
    r = run("cnn", data=data, out=tmp_path / "r", resume=True, progress=False, num_workers=0, precision="fp16",
            **{**TINY, "epochs": 2})
    assert probe.scaler_state == saved and probe.scaler_state["scale"] != 2.0**16  # not a fresh GradScaler's
    assert r.finished and len(r.history) == 2


@pytest.mark.parametrize("opt", [["--precision", "fp32"], ["--precision", "bf16"], ["--opt", "ranger", "--schedule",
                                 "flat_cos"]], ids=["adam-fp32", "adam-bf16", "ranger-auto"])
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
                              verbose=False)
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
            "history": [{"epoch": 0, "accuracy": 0.5}], "__tensor__": "a key that looks like a marker",
            "epoch": 0, "settings": {}}
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


def _one_epoch_in_r(tmp_path, monkeypatch):
    "A one-epoch run of generated images in tmp_path/r (its cache its own): the data folder, and the run's settings."
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "d", n_train=3, n_valid=2)
    kw = dict(size=32, presize=32, bs=2, epochs=1, progress=False, num_workers=0, seed=0)
    run("cnn", data=root, out=tmp_path / "r", **kw)
    return root, kw


def test_resuming_over_other_images_is_refused(tmp_path, monkeypatch):
    "A trial replaced an image, and swapped two between classes (same counts): resuming carried on over mixed data."
    import shutil

    root, kw = _one_epoch_in_r(tmp_path, monkeypatch)
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


def test_a_run_owns_its_folder_while_it_runs(tmp_path, capsys):
    """Two runs into one --out both reported success, one's results lost, the folder mixing both: the second is now
    refused in one line naming the first's process, from Python and the command line, resume or not; the lock goes
    with its process, however it ends."""
    from resnets.cli import main
    from resnets.files import RUN_LOCK, FolderInUse

    data, out = make_tree(tmp_path / "data", n_train=4, n_valid=2), tmp_path / "run"
    kw = dict(data=data, size=32, presize=32, bs=4, epochs=1, progress=False, num_workers=0, seed=0)
    refused = []

    class _Second(Callback):
        "While the first run trains, a second one into the same folder (this process, another open of the lock)."

        def after_epoch(self):
            for resume in (False, True):
                with pytest.raises(FolderInUse, match=f"in use by another run \\(process {os.getpid()} on "):
                    run("cnn", out=out, resume=resume, **kw)
            refused.append(main(["run", "cnn", "--data", str(data), "--out", str(out), "--epochs", "1"]))

    first = run("cnn", out=out, cbs=[_Second()], **kw)
    assert refused == [2] and first.finished and len(first.history) == 1
    err = capsys.readouterr().err
    assert err.count("in use by another run") == 1 and "choose another output folder" in err
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom resnets.files import owned\n"
                               "with owned(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(tmp_path / "other")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"process {holder.pid} on"):
            run("cnn", out=tmp_path / "other", **kw)
    finally:
        holder.kill()
        holder.wait()
    assert run("cnn", out=tmp_path / "other", **kw).finished, "a killed run's lock went with it"
    with pytest.raises(InputError):
        run("cnn", out=tmp_path / "never", **{**kw, "bs": -1})
    assert not (tmp_path / "never").exists(), "a run refused before any work leaves no folder behind"
    assert (out / RUN_LOCK).exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _damaged(state: dict, change) -> dict:
    "A deep copy of a checkpoint's tree with `change` applied to it."
    import copy

    state = copy.deepcopy(state)
    change(state)
    return state


def _set(path, value):
    "A change that sets state[path[0]][path[1]]... to `value`."

    def change(state):
        *keys, last = path
        for k in keys:
            state = state[k]
        state[last] = value

    return change


def _grow(state):
    state["history"] = state["history"] + [dict(state["history"][-1], epoch=i) for i in range(2, 5)]
    state["epoch"] = 3


DAMAGE = {  # what the trial did to a checkpoint (safely parsed, then used unchecked), and what the refusal names
    "epoch NaN": (_set(["epoch"], float("nan")), "'epoch' is a float"),
    "epoch -5": (_set(["epoch"], -5), "its epoch \\(-5\\) is not the last"),
    "epoch 10**12": (_set(["epoch"], 10**12), "is not the last of the 1 epochs"),
    "epoch past the run": (_grow, "at epoch 4 of a run of 2"),
    "model a list": (_set(["model"], [1, 2]), "'model' is a list"),
    "a weight of another shape": (lambda s: s["model"].update({"0.0.weight": torch.zeros(3, 3)}),
                                  "0.0.weight is torch.float32 \\(3, 3\\), the network's torch.float32 \\(16, 3, 3"),
    "a weight of another dtype": (lambda s: s["model"].update({"0.0.weight": s["model"]["0.0.weight"].double()}),
                                  "float64"),
    "a weight missing": (lambda s: s["model"].pop("0.0.weight"), "missing \\['0.0.weight'\\]"),
    "NaN in a running mean": (lambda s: s["model"]["0.1.running_mean"].fill_(float("nan")),
                              "0.1.running_mean holds NaN"),
    "optimiser state cut short": (lambda s: s["opt"]["state"].pop(), "not one record for each"),
    "optimiser state of another shape": (lambda s: s["opt"]["state"][0].update(grad_avg=torch.zeros(7)),
                                         "'grad_avg' for parameter 0 is \\(7,\\)"),
    "torch's random state a string": (_set(["rng", "torch"], "abc"), "random state cannot be restored"),
    "NumPy's random state too short": (_set(["rng", "numpy"], [1]), "random state cannot be restored"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_refused_in_one_line_before_training_on(tmp_path, damage, capsys):
    """Wrong types, shapes, dtypes, epochs or non-finite weights raised raw tracebacks, resumed into a history longer
    or shorter than the run, or trained at chance with exit 0: each is refused, naming what is wrong."""
    from resnets.cli import main

    data = make_tree(tmp_path / "data", n_train=4, n_valid=2)
    out = tmp_path / "run"
    argv = ["run", "cnn", "--data", str(data), "--out", str(out), "--size", "32", "--presize", "32", "--bs", "4",
            "--epochs", "2", "--seed", "0", "--no-progress"]
    with pytest.MonkeyPatch.context() as m:
        _with(m, _StopAfter(1))
        assert main(argv) == 0
    change, names = DAMAGE[damage]
    checkpoint._atomic_save(_damaged(load_checkpoint(out), change), out / CHECKPOINT)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a usable checkpoint" in err and "remove it" in err, err
    assert __import__("re").search(names, err), err
    assert len(load_results(out).history) == 1, "nothing trained on from it"


def test_a_checkpoint_nested_beyond_reason_is_refused_not_a_recursion_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"0": torch.zeros(1)}, str(tmp_path / CHECKPOINT), metadata={checkpoint.FORMAT: "[" * 100000 +
                                                                            "]" * 100000})
    with pytest.raises(InputError, match="cannot be read \\(RecursionError"):
        load_checkpoint(tmp_path)
    torch.save([1, 2], tmp_path / LEGACY_CHECKPOINT)
    (tmp_path / CHECKPOINT).unlink()
    with pytest.raises(InputError, match="it holds a list, not a tree"):
        load_checkpoint(tmp_path)


def test_resuming_over_other_validation_images_or_labels_is_refused(tmp_path, monkeypatch):
    "The data key covers the validation images and a CSV's labels too (not only the training images)."
    import csv

    root, kw = _one_epoch_in_r(tmp_path, monkeypatch)
    image = root / "val" / "dog" / "dog0.jpg"
    data = bytearray(image.read_bytes())
    data[-100] ^= 0xFF
    image.write_bytes(bytes(data))
    with pytest.raises(InputError, match="its images are not those it was trained on"):
        run("cnn", data=root, out=tmp_path / "r", resume=True, **kw)
    rows = [(f.relative_to(root).as_posix(), f.parent.name, f.parts[-3] == "val") for f in sorted(root.rglob("*.jpg"))]
    labels = root / "labels.csv"  # (its paths are read relative to its folder)

    def write(rows):
        with open(labels, "w", newline="") as f:
            csv.writer(f).writerows([("name", "label", "is_valid"), *rows])

    write(rows)
    run("cnn", data=labels, out=tmp_path / "c", **kw)
    a, b = next(i for i, r in enumerate(rows) if r[1] == "cat"), next(i for i, r in enumerate(rows) if r[1] == "dog")
    rows[a], rows[b] = (rows[a][0], "dog", rows[a][2]), (rows[b][0], "cat", rows[b][2])  # two labels swapped
    write(rows)
    with pytest.raises(InputError, match="its images are not those it was trained on"):
        run("cnn", data=labels, out=tmp_path / "c", resume=True, **kw)
