"""resnets.training: build and run an experiment, write its results every epoch, the same seed's same losses, resume
checks."""

import json
import shutil
import time

import pytest
import torch

from conftest import BOOK_FINAL, TINY, curve
from resnets import InputError, build, callbacks, load_results, run
from resnets.checkpoint import CHECKPOINT


@pytest.mark.slow
def test_mnist_tiny_trains_to_high_accuracy(mnist_tiny):
    # 3s vs 7s, 709 training images, 5 epochs: about 30 s here; seeds 1-3 reached 0.924-0.983 when written
    r = run("mnist_pool", data=mnist_tiny, seed=42, save=False, progress=False)
    assert r.accuracy >= 0.9


@pytest.mark.parametrize("name", list(BOOK_FINAL))
def test_each_experiment_runs_from_python(name, imagenette, tmp_path):
    r = run(name, data=imagenette, out=tmp_path / name, seed=0, progress=False, num_workers=0, **TINY)
    assert r.finished and len(r.history) == 1
    h = r.history[0]
    assert set(h) >= {"epoch", "train_loss", "valid_loss", "accuracy", "time"}
    assert "top_5_accuracy" not in h, "2 classes: the target is always in the top 5, so it is not shown"
    assert 0 <= h["accuracy"] <= 1 and h["time"] > 0
    saved = load_results(tmp_path / name)
    assert saved.history == r.history and saved.seed == 0
    assert saved.settings["size"] == 32 and saved.settings["n_train"] == 16 and saved.settings["epochs"] == 1
    assert set(saved.versions) >= {"resnets", "fastai", "torch"} and saved.device.startswith("cpu")
    assert saved.book["accuracy"][-1] == BOOK_FINAL[name]
    modes = {f: (tmp_path / name / f).stat().st_mode & 0o777 for f in ("results.json", "results.png", CHECKPOINT)}
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


def _ctrl_c_after_epoch_0(order: float):
    "A callback that acts as Ctrl-C at the end of the first epoch, at `order` among the run's callbacks."
    from fastai.callback.core import Callback

    class CtrlC(Callback):
        def after_epoch(self):
            if self.epoch == 0:
                raise KeyboardInterrupt

    cb = CtrlC()
    cb.order = order
    return cb


def test_ctrl_c_just_after_an_epoch_is_printed_says_what_is_saved_and_resumes(tree, tmp_path):
    "Found in a trial: Ctrl-C as epoch 0's row appeared said 'before the first epoch finished' and nothing to resume."
    from resnets.errors import RunInterrupted

    kw = dict(data=tree, size=32, presize=40, bs=4, epochs=2, progress=False, num_workers=0, seed=0)
    with pytest.raises(RunInterrupted, match="after 1 of 2 epochs") as e:
        run("cnn", out=tmp_path / "r", cbs=[_ctrl_c_after_epoch_0(callbacks.ORDERS["EpochLog"] + 0.5)], **kw)
    assert "resume=True" in str(e.value) and e.value.folder == tmp_path / "r"
    assert not load_results(tmp_path / "r").finished and len(load_results(tmp_path / "r").history) == 1
    with pytest.raises(FileExistsError, match=r"unfinished run \(1 of 2 epochs\).*--resume"):
        run("cnn", out=tmp_path / "r", **kw)
    r = run("cnn", out=tmp_path / "r", resume=True, **kw)
    assert r.finished and len(r.history) == 2


def test_resuming_a_finished_run_reports_it_without_training(tree, tmp_path, capsys):
    "A notebook executed again on its finished run (resume=True): the run as it was, nothing trained, its Learner back."
    from fastai.callback.core import Callback

    from resnets.checkpoint import find_checkpoint

    class Slow(Callback):  # epochs that take 3 s: the training time a report of the run must not forget
        def after_epoch(self):
            time.sleep(3)

    kw = dict(data=tree, size=32, presize=40, bs=4, epochs=2, progress=False, num_workers=0, seed=0)
    first = run("cnn", out=tmp_path / "r", cbs=[Slow()], **kw)
    saved = find_checkpoint(tmp_path / "r").read_bytes()
    again = run("cnn", out=tmp_path / "r", resume=True, **kw)
    assert "finished all 2 epochs already" in capsys.readouterr().out
    assert again.finished and again.history == first.history and again.learn.train_iter == 0
    trained = sum(h["time"] for h in first.history)
    assert trained >= 6 and trained <= again.wall_time <= first.wall_time + 30, (trained, again.wall_time)
    assert find_checkpoint(tmp_path / "r").read_bytes() == saved
    x = again.learn.dls.valid.one_batch()[0]
    with torch.no_grad():
        assert torch.equal(again.learn.model.eval()(x), first.learn.model.eval()(x))


def test_ctrl_c_before_the_first_checkpoint_never_says_the_run_finished(tree, tmp_path):
    "Stopped between the history's first row and the first checkpoint: the truth, and --resume starts it again."
    from resnets.errors import RunInterrupted

    kw = dict(data=tree, size=32, presize=40, bs=4, epochs=2, progress=False, num_workers=0, seed=0)
    cb = _ctrl_c_after_epoch_0((callbacks.ORDERS["RunHistory"] + callbacks.ORDERS["Checkpoint"]) / 2)
    with pytest.raises(RunInterrupted, match="before the first checkpoint") as e:
        run("cnn", out=tmp_path / "r", cbs=[cb], **kw)
    assert "finished" not in str(e.value) and "resume=True" in str(e.value)
    assert not load_results(tmp_path / "r").finished
    with pytest.raises(FileExistsError, match="unfinished run with no checkpoint") as e:
        run("cnn", out=tmp_path / "r", **kw)
    assert "holds a finished run" not in str(e.value) and e.value.unfinished
    r = run("cnn", out=tmp_path / "r", resume=True, **kw)  # starts again in that folder
    assert r.finished and len(r.history) == 2


def test_a_second_run_does_not_overwrite_the_first(imagenette, tiny_cnn_run):
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run("cnn", data=imagenette, out=tiny_cnn_run.folder, progress=False, num_workers=0, **TINY)


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


@pytest.mark.parametrize("fast_data", [False, True])
def test_the_same_seed_gives_the_same_losses(imagenette, tmp_path, fast_data):
    kw = dict(data=imagenette, progress=False, num_workers=0, fast_data=fast_data, **{**TINY, "epochs": 2})
    a, b = (run("res_cnn", out=tmp_path / n, seed=3, **kw) for n in "ab")
    assert curve(a) == curve(b)
    c = run("res_cnn", out=tmp_path / "c", seed=4, **kw)
    assert curve(c) != curve(a)


def test_resume_checks_its_settings_and_needs_a_folder(imagenette, tiny_cnn_run, tmp_path):
    kw = dict(data=imagenette, progress=False, num_workers=0, **TINY)
    shutil.copytree(tiny_cnn_run.folder, tmp_path / "r")
    with pytest.raises(ValueError, match="lr: 0.003 then, 0.01 now"):
        run("cnn", out=tmp_path / "r", resume=True, lr=1e-2, **kw)
    with pytest.raises(ValueError, match="out=FOLDER"):
        run("cnn", resume=True, **kw)
    (tmp_path / "r" / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="remove it"):
        run("cnn", out=tmp_path / "r", resume=True, **kw)


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
    from resnets.checkpoint import check_same_settings

    now = {f.name: f.default for f in fields(Experiment) if f.metadata.get("option")}
    saved = {k: v for k, v in now.items() if k not in ("lr_mult", "ema")}
    check_same_settings(saved, now, "runs/old")
    with pytest.raises(InputError, match=r"cannot resume runs/old with different settings \(ema: 0.0 then, 0.99 now\)"):
        check_same_settings(saved, {**now, "ema": 0.99}, "runs/old")


def test_a_small_folder_trains_in_smaller_batches_and_says_so(tree, tmp_path, capsys):
    "12 training images and the chapter's batch of 128: batches of 4 (three an epoch), said in a line."
    r = run("cnn", data=tree, size=32, presize=40, epochs=1, save=False, progress=False, num_workers=0)
    assert r.settings["bs"] == 4 and r.learn.dls.bs == 4
    out = capsys.readouterr().out
    assert "12 training images, so that an epoch has several steps, not one batch of 128: batches of 4 (3 an " \
           "epoch)" in out and "the learning rate stays 0.003" in out
    r = run("cnn", data=tree, size=32, presize=40, bs=64, epochs=1, save=False, progress=False, num_workers=0)
    assert r.settings["bs"] == 4 and "fewer than one batch of 64: batches of 4" in capsys.readouterr().out


def test_a_few_hundred_photos_train_on_several_batches_an_epoch():
    "Found in a trial: 192 photos in the default batches of 128 trained one step an epoch (64 never seen)."
    from resnets.data import choose_bs

    assert choose_bs(9469) == (128, None), "Imagenette: the chapter's batch size"
    assert choose_bs(192) == (16, "192 training images, so that an epoch has several steps, not one batch of 128: "
                                  "batches of 16 (12 an epoch)")
    assert choose_bs(1000)[0] == 64 and choose_bs(2048)[0] == 128 and choose_bs(100)[0] == 16
    bs, why = choose_bs(192, 128)  # asked for: kept, with the batch size that would give 8 steps
    assert bs == 128 and "1 step(s) an epoch" in why and "--bs 16 gives 12" in why
    assert choose_bs(192, 32) == (32, "192 training images in batches of 32: 6 step(s) an epoch (fastai drops the "
                                      "last 0 image(s) of each); --bs 16 gives 12")
    assert choose_bs(12) == choose_bs(12, 128)[:1] + (choose_bs(12)[1],) and choose_bs(12)[0] == 4
    assert choose_bs(5)[0] == 2
    with pytest.raises(InputError, match="at least 4"):
        choose_bs(3)


def test_a_small_folder_run_records_and_resumes_with_its_chosen_batch_size(tree, tmp_path):
    "The record keeps the batch size trained with; resuming chooses it again from the same images."
    kw = dict(data=tree, size=32, presize=40, epochs=2, progress=False, num_workers=0, seed=0)
    first = run("cnn", out=tmp_path / "r", **kw)
    assert first.settings["bs"] == 4
    (tmp_path / "r" / "results.json").write_text((tmp_path / "r" / "results.json").read_text().replace(
        '"finished": true', '"finished": false'))
    r = run("cnn", out=tmp_path / "r", resume=True, **kw)  # the same settings: nothing refused
    assert r.settings["bs"] == 4


def test_run_passes_fastai_callbacks_through(tree):
    from fastai.callback.core import Callback

    class Count(Callback):
        seen = 0

        def after_batch(self):
            Count.seen += 1

    run("cnn", data=tree, size=32, presize=40, bs=4, epochs=1, save=False, progress=False, num_workers=0,
        cbs=[Count()])
    assert Count.seen >= 3  # 12 images in batches of 4, and the validation batches


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "wandb"])
def test_log_writes_fastai_s_logs_and_the_learner_still_exports(kind, tree, tmp_path, monkeypatch):
    logged = []
    if kind == "wandb":  # offline: what fastai's WandbCallback hands wandb, then wandb's own run folder
        import wandb

        monkeypatch.setenv("WANDB_MODE", "offline")
        real = wandb.sdk.wandb_run.Run.log  # wandb.init points wandb.log at its run's

        def log(run, data, *a, **k):
            logged.append(dict(data))
            return real(run, data, *a, **k)

        monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    monkeypatch.chdir(tmp_path)  # a relative --out, as people type it (fastai puts a relative CSV under the data)
    r = run("cnn", data=tree, size=32, presize=40, bs=4, epochs=2, log=kind, out="r", progress=False,
            num_workers=0)
    if kind == "csv":
        rows = (tmp_path / "r" / "history.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,train_loss,valid_loss,accuracy") and len(rows) == 3
    elif kind == "wandb":
        epochs = [d for d in logged if "accuracy" in d]
        assert [d["accuracy"] for d in epochs] == [h["accuracy"] for h in r.history], "each epoch's, as recorded"
        (run_dir,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
        assert next(run_dir.glob("run-*.wandb")).stat().st_size > 1000
        assert wandb.run is None, "the wandb run is finished with the resnets run"
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (events,) = (tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events))
        acc.Reload()
        assert {"train_loss", "valid_loss", "accuracy"} <= set(acc.Tags()["scalars"])
        assert len(acc.Scalars("accuracy")) == 2
    r.learn.export(tmp_path / "learner.pkl")  # no logger left on the Learner to break pickling
    assert (tmp_path / "learner.pkl").stat().st_size > 0


class _Killed(Exception):
    "A kill, as the checkpoint of epoch `n` (counted over the whole run) has just been written."


def _kill_after(n):
    from fastai.callback.core import Callback

    from resnets.callbacks import ORDERS

    class KillAfter(Callback):
        order = ORDERS["Checkpoint"] + 1

        def after_epoch(self):
            if _epochs_done(self.learn) == n + 1:
                raise _Killed(f"killed after epoch {n}")

    return KillAfter()


def _epochs_done(learn):
    "Epochs recorded in the run folder so far (RunHistory's count, over both fits of a fine-tuning run)."
    return len(next(cb for cb in learn.cbs if type(cb).__name__ == "RunHistory").results.history)


def _fine_tune_kw(generated_run, tree):
    return dict(data=tree, init=generated_run.folder, size=32, presize=40, bs=4, freeze_epochs=1, epochs=2,
                progress=False, num_workers=0, seed=5)


def test_fine_tuning_is_fastai_s_fine_tune(generated_run, tree):
    "The run's fine-tuning steps through the learning rates and momenta fastai's own fine_tune does, batch by batch."
    from fastai.callback.core import Callback

    def recorder():
        seen = []

        class Hypers(Callback):
            def after_batch(self):
                if self.training:
                    seen.append([(round(h["lr"], 12), round(h["mom"], 12)) for h in self.opt.hypers])

        return seen, Hypers()

    ours, cb = recorder()
    kw = _fine_tune_kw(generated_run, tree)
    run("cnn", save=False, cbs=[cb], **kw)
    theirs, cb = recorder()
    learn, exp = build("cnn", cbs=[cb], verbose=False, **{k: v for k, v in kw.items() if k != "progress"})
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(exp.epochs, exp.lr, freeze_epochs=exp.freeze_epochs, lr_mult=exp.lr_mult)
    assert len(ours) == len(theirs) == 3 * 3 and ours == theirs  # 12 images in batches of 4, 3 epochs


@pytest.mark.parametrize("killed_after", [0, 1])
def test_a_killed_fine_tuning_run_resumes_to_the_uninterrupted_history(generated_run, tree, tmp_path, killed_after):
    "Killed after its frozen epoch (0) or in the middle of the unfrozen fit (1), it resumes to the same history."
    kw = _fine_tune_kw(generated_run, tree)
    whole = run("cnn", out=tmp_path / "whole", **kw)
    with pytest.raises(_Killed):
        run("cnn", out=tmp_path / "r", cbs=[_kill_after(killed_after)], **kw)
    assert len(load_results(tmp_path / "r").history) == killed_after + 1
    resumed = run("cnn", out=tmp_path / "r", resume=True, **kw)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert curve(resumed) == curve(whole)


def test_a_fine_tuning_run_takes_a_budget(generated_run, tree, tmp_path, monkeypatch):
    """The plan counts the frozen epoch too. The machine's speed is faked (as tests/test_budget.py's exact tests do),
    so that a loaded machine plans the same: 0.1 s a step, 0.2 s a validation, no set-up time."""
    from resnets import budget, training

    monkeypatch.setattr(budget, "_time_steps", lambda learn, size: 0.1)
    monkeypatch.setattr(budget, "_time_validation", lambda learn, size: 0.2)
    monkeypatch.setattr(training, "plan_budget", lambda learn, exp, spent: budget.plan_budget(learn, exp, 0.0))
    kw = {**_fine_tune_kw(generated_run, tree), "epochs": 5}
    r = run("cnn", out=tmp_path / "b", budget=8.0, **kw)
    plan = r.settings["budget_plan"]
    # an epoch: 3 steps (12 images in batches of 4) + 0.5 s of saving + 0.22 s of validation = 1.02 s; the frozen
    # epoch and the final pass (validation + 2 s) leave 8 - 1.02 - 2.22 = 4.76 s: 4 epochs
    assert plan["epochs"] == r.settings["epochs"] == 4 and len(r.history) == 1 + 4, "frozen + planned"


@pytest.mark.parametrize("fast", [False, True])
def test_a_run_s_images_are_get_data_s_defaults(tree, fast, tmp_path, monkeypatch):
    "Without pretrained weights a run prepares images as the chapter does: get_data's defaults, no centre crop."
    import torch

    from resnets import get_data

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    learn, _ = build("cnn", data=tree, size=32, presize=40, bs=4, fast_data=fast, num_workers=0, verbose=False)
    dls = get_data(tree, presize=40, resize=32, bs=4, fast_data=fast, num_workers=0)
    ours, theirs = learn.dls.valid.one_batch()[0], dls.valid.one_batch()[0]
    assert torch.equal(ours.as_subclass(torch.Tensor), theirs.as_subclass(torch.Tensor))


def test_top_5_accuracy_is_reported_only_with_more_than_5_classes(tmp_path):
    "Found in a trial: top-5 accuracy shown (always 1.0) for 4 classes."
    from conftest import make_tree

    for n, shown in ((5, False), (6, True)):
        data = make_tree(tmp_path / f"d{n}", classes=[f"c{i}" for i in range(n)], n_train=2, n_valid=1)
        r = run("cnn", data=data, size=32, presize=40, bs=4, epochs=1, save=False, progress=False, num_workers=0)
        assert ("top_5_accuracy" in r.history[0]) == shown, n
        assert ("top_5_accuracy" in r.learn.recorder.metric_names) == shown


def test_a_record_keeps_no_path_of_the_machine_it_ran_on_where_it_need_not(monkeypatch):
    "Found in a trial: committed results carried /work/... paths and a notebook kernel's arguments."
    from pathlib import Path
    from types import SimpleNamespace

    from resnets.config import Experiment
    from resnets.training import _command_line, _data_record

    here = SimpleNamespace(path=Path("/home/someone/.fastai/data/imagenette2-160"))
    assert _data_record(Experiment("x", data="imagenette-160"), here) == "imagenette-160", "found again by name"
    assert _data_record(Experiment("x", data="imagenette-160/noisy.csv"), here) == "imagenette-160/noisy.csv"
    assert _data_record(Experiment("x", data="/my/photos"), SimpleNamespace(path=Path("/my/photos"))) == "/my/photos"
    kernel = "/srv/env/lib/python3.11/site-packages/ipykernel_launcher.py"
    monkeypatch.setattr("sys.argv", [kernel, "-f", "/tmp/k.json"])
    assert _command_line() == []
    monkeypatch.setattr("sys.argv", ["/srv/env/bin/resnets", "run", "cnn", "--epochs", "2"])
    assert _command_line() == ["resnets", "run", "cnn", "--epochs", "2"]
    monkeypatch.setattr("sys.argv", ["/home/someone/train.py", "--fast"])
    assert _command_line() == ["train.py", "--fast"]


def test_a_run_trained_with_precision_auto_resumes_on_another_kind_of_machine(capsys):
    """--precision auto is fp16 on a GPU and bf16 or fp32 on a CPU: a GPU run resumes on a CPU (it was refused, and
    the advice, --precision fp16, cannot run there), with a line; an explicit precision is still compared."""
    from dataclasses import fields

    from resnets import Experiment
    from resnets.checkpoint import check_same_settings

    now = {f.name: f.default for f in fields(Experiment) if f.metadata.get("option")}
    saved = {**now, "precision": "fp16"}
    check_same_settings(saved, {**now, "precision": "bf16"}, "runs/gpu", auto=True)
    assert "trained in fp16 so far, in bf16 here" in capsys.readouterr().out
    with pytest.raises(InputError, match="precision: 'fp16' then, 'bf16' now"):
        check_same_settings(saved, {**now, "precision": "bf16"}, "runs/gpu", auto=False)


def test_a_checkpoint_of_more_gpus_resumes_on_fewer(monkeypatch):
    "Every GPU's random state is saved; a machine with fewer GPUs restores those it has (torch's own raised)."
    from types import SimpleNamespace

    from resnets import checkpoint

    def all_of_them(states):  # torch's set_rng_state_all: device i for the i-th state, an error past the last GPU
        for i, s in enumerate(states):
            if i >= torch.cuda.device_count():
                raise IndexError(f"no GPU {i}")
            torch.cuda.set_rng_state(s, i)

    dls = SimpleNamespace(loaders=[])
    state = {**checkpoint._rng_state(dls), "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", all_of_them)
    checkpoint._set_rng_state(state, dls)
    assert restored == [(0, 0), (1, 1)]
