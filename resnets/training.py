"""Training: `build()` makes an experiment's settings into a Learner on its data, `run()` trains it into a run
folder, the one code path behind Python, the command line and the notebooks; `lr_find` and `interpret_run`.

A run folder (`--out`, default runs/NAME-TIME) holds results.json and checkpoint.safetensors, rewritten every epoch
(resnets.callbacks.RunHistory and Checkpoint), results.png, and the interpretation plots of a finished run;
`resume=True` continues an interrupted one with the same settings. Distributed runs (torchrun / accelerate
launch) go through fastai's `distrib_ctx`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib, set_seed
from fastcore.foundation import L

from .budget import plan_budget
from .callbacks import (
    BatchNormRecalibration,
    Checkpoint,
    EpochLog,
    ImageSizes,
    LastValidPreds,
    RunHistory,
    SkipValidation,
    StopOnNaN,
    WeightAverage,
    loggers,
)
from .checkpoint import (
    CHECKPOINT,
    check_fits,
    check_same_settings,
    find_checkpoint,
    fingerprint,
    load_checkpoint,
    restore_model,
    set_deterministic,
)
from .config import DATA_SETS, Experiment
from .data import BS, get_data
from .distributed import distributed_ready, join_process_group
from .errors import InputError, MissingFile, RunExists, RunInterrupted, one_line
from .evaluate import flip_tta, interpret, one_process, shared_predictions
from .files import check_writable, owned
from .finetune import body_head_splitter, load_body
from .learner import accuracy_metric, fit_flat_cos, get_learner, top_5_metric
from .models import create_model
from .optim import OPT_FUNCS
from .pretrained import CHAPTER_PREPROCESSING, Preprocessing, load_pretrained_body, read_pretrained
from .recipes import configure
from .results import Results, describe_device, load_results, save_figure, versions

__all__ = ["build", "run", "lr_find", "interpret_run", "compile_model"]


def build(name: str | Experiment, cbs=None, verbose: bool = True, **overrides):
    """The experiment's Learner on its data, ready for `lr_find` or `fit_one_cycle`, and the configured experiment.

    `overrides` are `configure`'s (data=..., size=..., fast_data=True, ...)."""
    exp = configure(name, verbose=verbose, **overrides)
    weights, prep = None, CHAPTER_PREPROCESSING  # ImageNet's mean and std, fastai's bilinear, no centre crop
    if exp.pretrained is not False:  # the images must be those the weights were trained on (resnets.pretrained)
        weights, prep, where = read_pretrained(exp.pretrained, exp.model, exp.stem)
        presize = prep.resize_for(exp.test_size or exp.size)
        if verbose and presize != exp.presize:
            print(f"resnets: presize {presize} for {where}: validation keeps the centre {exp.test_size or exp.size} px "
                  f"of images resized to {presize} ({prep.interpolation}), as timm evaluates them ({prep.source})")
        exp = replace(exp, presize=presize)
    if exp.seed is not None:  # each rank its own augmentation draws, reproducibly (seed + rank, as timm does); DDP
        # copies rank 0's initial weights to every rank. CPU runs repeat exactly; on a GPU kernels may still vary.
        set_seed(exp.seed + rank_distrib())
    dls = _data(exp, prep)  # its batch size chosen for the data's size when the experiment leaves it open (None)
    if verbose and dls.train.bs != (exp.bs or BS):
        print(f"resnets: the learning rate stays {exp.lr:g}, the recipe's: an Adam step's size follows the rate, not "
              "the batch, as SGD's would (--lr chooses another)")
    exp = replace(exp, bs=dls.train.bs)  # the run's record keeps the batch size it trained with
    model = create_model(exp.model, n_out=dls.c, zero_gamma=exp.zero_gamma, width=exp.width, stem=exp.stem)
    _check_input_size(model, exp)
    if exp.init is not None:
        load_body(model, exp.init, exp.model, exp.width, exp.stem)
    if weights is not None:
        load_pretrained_body(model, weights, where)
    cbs = [ImageSizes(exp), *([WeightAverage(exp.ema)] if exp.ema else []),
           *([BatchNormRecalibration()] if exp.recalibrate_bn else []),
           *([SkipValidation(exp.valid_last)] if exp.valid_last else []), *L(cbs)]
    top_5 = [top_5_metric()] if dls.c > 5 else []  # with 5 classes or fewer the target is always in the top 5
    learn = get_learner(dls, model, precision=exp.precision, cbs=cbs, metrics=[accuracy_metric(), *top_5],
                        label_smoothing=exp.label_smoothing, mixup=exp.mixup, verbose=verbose,
                        splitter=body_head_splitter, opt_func=OPT_FUNCS[exp.opt])
    if exp.compile:  # in place, once get_learner has made it channels-last: learn.model is the compiled module
        compile_model(learn.model)
    learn.preprocessing = prep
    return learn, exp


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` the model in place (`nn.Module.compile`: its state_dict, and so checkpoints, exports and
    resuming, are unchanged), for static shapes: each image size, training and validation, and a last smaller batch
    compile once each (a few minutes apiece on a small CPU), rather than a slower dynamic-shape kernel for all."""
    import torch._dynamo

    cfg = torch._dynamo.config  # (recompile_limit: cache_size_limit before torch 2.6)
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 64))  # image sizes x training and validation x frozen or not
    model.compile(dynamic=False)
    return model


def _fine_tune(learn, exp: Experiment, checkpoint: Checkpoint, counters) -> None:
    """fastai's `Learner.fine_tune` (the head alone for `freeze_epochs` with `slice(lr)`, then every layer at half
    the rate, the body `lr_mult` times slower), written out so that a resumed run goes on from the checkpoint's
    `start_epoch` of the two fits together: the fits already done are skipped, the one it stopped in goes on from
    its next epoch. `counters`: the other callbacks that count epochs within a fit (RunHistory, EpochLog)."""
    frozen, start, counters = exp.freeze_epochs, checkpoint.start_epoch, (*counters, checkpoint)
    if start < frozen:
        learn.freeze()
        for cb in counters:
            cb.start_epoch = start
        learn.fit_one_cycle(frozen, slice(exp.lr), pct_start=0.99, start_epoch=start)
    learn.unfreeze()  # fastai's freeze_to clears the optimiser's state: the unfrozen fit starts afresh
    if start == frozen:  # resumed just as that fit begins: nothing of the frozen fit's training state carries on
        checkpoint.state = None  # (the optimiser's state, cleared; the smoothed loss and the loss scaler, new)
    for cb in counters:
        cb.start_epoch = max(0, start - frozen)
    base = exp.lr / 2  # as fastai's fine_tune halves it
    learn.fit_one_cycle(exp.epochs, slice(base / exp.lr_mult, base), pct_start=0.3, div=5.0,
                        start_epoch=max(0, start - frozen))


def _data(exp: Experiment, prep: Preprocessing):
    "The experiment's DataLoaders, its images prepared as `prep` says (the chapter's, or pretrained weights')."
    return get_data(exp.data, exp.presize, exp.train_size(0), exp.bs, classes=exp.classes, subset=exp.subset,
                    num_workers=exp.num_workers, flip=exp.flip, fast_data=exp.fast_data, holdout=exp.holdout,
                    valid_pct=exp.valid_pct, label_col=exp.label_col, seed=42 if exp.seed is None else exp.seed,
                    augment=exp.augment, **prep.data_kw(exp.test_size or exp.size))


def _check_input_size(model, exp: Experiment) -> None:
    "A model that is not fully convolutional accepts one size only: say so before training, not deep in torch."
    fixed = getattr(model, "input_size", None)
    if fixed is not None and exp.size != fixed:
        raise InputError(f"model {exp.model!r} cannot take {exp.size} px images (it is not fully convolutional): "
                         f"use its experiment's size, {fixed} px")


def _check_free(out: str | os.PathLike) -> None:
    if not (Path(out) / "results.json").exists():
        return
    done = load_results(out)
    n, total = len(done.history), done.settings.get("epochs", "?")
    if not done.finished and find_checkpoint(out):
        raise RunExists(f"{out} holds an unfinished run ({n} of {total} epochs): continue it with resume=True "
                        "(--resume), or choose another output folder", folder=out, unfinished=True)
    if not done.finished:  # stopped before its first checkpoint was written: resume starts it again, in this folder
        raise RunExists(f"{out} holds an unfinished run with no checkpoint ({n} of {total} epochs recorded, none "
                        "saved to go on from): start it again there with resume=True (--resume), or choose another "
                        "output folder", folder=out, unfinished=True)
    raise RunExists(f"{out} already holds a finished run: choose another output folder or remove it", folder=out)


def _new_run_folder(out: str | os.PathLike | None, name: str) -> Path:
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{name}-{stamp}"
        i = 2
        while out.exists():
            out, i = Path("runs") / f"{name}-{stamp}-{i}", i + 1
    out = Path(out)
    _check_free(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(
    name: str | Experiment,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    save: bool = True,
    resume: bool = False,
    cbs=None,
    **overrides,
) -> Results:
    """Train an experiment with `fit_one_cycle` (fastai's `fine_tune` with `init`); `overrides` (any of `OPTIONS`)
    change the chapter's settings.

    Every epoch is saved into `out` (results.json, and checkpoint.safetensors for `resume`). `resume=True` continues the
    run in `out` from its last checkpoint with the same settings (a fresh start if it has none). `cbs`: more fastai
    callbacks for the Learner (loggers, your own), as `build` and fastai's `Learner` take them. A run owns its
    folder while it runs: another run into the same `out` is refused (FolderInUse, naming this one's process)."""
    hold = save and out is not None and rank_distrib() == 0
    with owned(out) if hold else contextlib.nullcontext():
        return _run(name, out, progress, save, resume, cbs, **overrides)


@dataclass
class _Job:
    "A run once prepared: its experiment, Learner and record, the checkpoint it goes on from, where it writes."

    exp: Experiment
    learn: Learner
    results: Results
    settings: dict
    state: dict | None  # the checkpoint resumed from
    folder: Path | None  # None: nothing saved (save=False, or a rank other than 0)
    checkpoint: Checkpoint
    world: int
    rank: int
    start: float  # perf_counter at the call's start: the run's wall time counts from there


def _run(name, out, progress: bool, save: bool, resume: bool, cbs, **overrides) -> Results:
    job = _prepare(name, out, save, resume, cbs, **overrides)
    kept = _fit(job, progress)
    return _finish(job, kept, save)


def _prepare(name, out, save: bool, resume: bool, cbs, **overrides) -> _Job:
    """Everything before the first batch: the settings checked, the folder and the checkpoint found, the process group
    joined, the Learner built, the budget planned, the record begun, a resumed run's weights put back."""
    start = time.perf_counter()
    exp = configure(name, verbose=rank_distrib() == 0, **overrides)
    if resume and (out is None or not save):
        raise InputError("resume needs the run's folder: pass out=FOLDER (--out) of the run to continue")
    state = load_checkpoint(out) if resume else None
    if not resume and save and out is not None:
        _check_free(out)  # before any work (resuming a run killed before its first checkpoint starts it again)
    world, rank = num_distrib(), rank_distrib()
    if save and rank == 0:  # before any training: a read-only or full run folder would fail at the first epoch's end
        check_writable(out if out is not None else "runs", fix="choose another folder (--out) or make it writable")
    if world > 1:
        distributed_ready()
        join_process_group()
    set_deterministic(exp.deterministic)
    learn, exp = build(exp, cbs=cbs, verbose=rank == 0)
    dls, plan = learn.dls, None
    if exp.budget is not None and state is not None:  # a resumed budget run keeps the schedule it planned
        exp, plan = replace(exp, epochs=state["settings"]["epochs"]), state["settings"].get("budget_plan")
    elif exp.budget is not None:
        exp, plan = plan_budget(learn, exp, time.perf_counter() - start)
        if rank == 0:
            print(f"resnets: {plan['epochs']} epoch(s) fit the budget of {exp.budget:.0f} s on this machine "
                  f"(predicted {plan['predicted_s']:.0f} s in all)")
    settings = {**exp.to_dict(), "source": str(exp.data), "data": _data_record(exp, dls), "precision": learn.precision,
                "n_train": len(dls.train_ds), "n_valid": len(dls.valid_ds), "n_classes": dls.c,
                "argv": _command_line()}
    settings["data_key"] = _data_key(exp, dls)
    if plan is not None:
        settings["budget_plan"] = plan
    if exp.pretrained is not False:  # what the weights were trained on, as this run fed them
        settings["preprocessing"] = learn.preprocessing.to_dict()
    if world > 1:
        settings.update(world_size=world)
    results = Results(exp.name, settings, exp.seed, versions=versions(), device=describe_device(dls.device),
                      book=exp.book, learn=learn)
    if state is not None:
        _continue_record(results, state, settings, exp, out)
    folder = None if not save or rank > 0 else Path(out) if resume else _new_run_folder(out, exp.name)
    if resume and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(folder, results, state, gather=save and world > 1)
    if state is not None:
        restore_model(learn, state, rank, find_checkpoint(out))
        if rank == 0:
            print(f"resnets: resuming {out} after epoch {state['epoch'] + 1} of {exp.epochs}")
    return _Job(exp, learn, results, settings, state, folder, checkpoint, world, rank, start)


def _continue_record(results: Results, state: dict, settings: dict, exp: Experiment, out) -> None:
    "A resumed run's record: its settings checked against the checkpoint's, its history taken from it."
    check_same_settings(state["settings"], settings, out, auto=exp.precision == "auto")
    if state["epoch"] + 1 > exp.total_epochs:
        raise InputError(f"{find_checkpoint(out)} is not a usable checkpoint: it is at epoch {state['epoch'] + 1} "
                         f"of a run of {exp.total_epochs}; remove it to start the run again")
    results.history = [dict(h) for h in state["history"]]
    recorded = load_results(out).history if (Path(out) / "results.json").is_file() else []
    for h, kept in zip(results.history, recorded):  # the last checkpoint's own write time is in results.json
        if "checkpoint_s" in kept:
            h.setdefault("checkpoint_s", kept["checkpoint_s"])
    if state["epoch"] + 1 >= exp.epochs:
        print(f"resnets: {out} finished all {exp.epochs} epochs already")


def _fit(job: _Job, progress: bool) -> LastValidPreds:
    """The training: fastai's fit (or fine-tune) with the run's callbacks, which are removed afterwards. Returns the
    callback that kept the last validation's predictions (for flip TTA)."""
    exp, learn, folder, checkpoint = job.exp, job.learn, job.folder, job.checkpoint
    keep = LastValidPreds()
    history = RunHistory(job.results, folder, checkpoint.start_epoch, job.start)
    log = EpochLog(checkpoint.start_epoch)
    run_cbs = [history, checkpoint, StopOnNaN(folder), log, *([keep] if exp.tta else []),
               *loggers(exp.log, folder, job.settings, append=job.state is not None, rank=job.rank)]
    learn.add_cbs(run_cbs)
    try:
        with contextlib.nullcontext() if progress else learn.no_bar(), _distributed(learn, job.world):
            if exp.fine_tunes:  # fastai's schedule: the new head alone, then every layer (the body slower)
                _fine_tune(learn, exp, checkpoint, (history, log))
            else:
                fit = partial(fit_flat_cos, learn) if exp.schedule == "flat_cos" else learn.fit_one_cycle
                fit(exp.epochs, exp.lr, start_epoch=checkpoint.start_epoch)
    except torch.cuda.OutOfMemoryError as e:
        more = f" and --resume to continue {folder}" if folder is not None else ""
        msg = f"out of GPU memory at batch size {exp.bs} ({e}): try --bs {max(1, exp.bs // 2)}{more}"
        raise MemoryError(msg) from None
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint is whole (written atomically); say how to go on
        raise _interrupted(exp, folder) from None
    finally:  # results.learn goes on as a plain Learner: more training in a notebook writes nothing into the run
        learn.remove_cbs(run_cbs)
        for cb in run_cbs:
            if hasattr(cb, "finish"):  # a logger with a run of its own to end (wandb)
                cb.finish()
    return keep


def _finish(job: _Job, keep: LastValidPreds, save: bool) -> Results:
    """After training: flip TTA, the record saved, and (a complete run) the interpretation drawn; the other ranks of a
    distributed run predict their share and return."""
    exp, learn, results, folder, world, rank = job.exp, job.learn, job.results, job.folder, job.world, job.rank
    trained_all = len(results.history) >= exp.total_epochs
    plain = None  # the plain images' logits and targets, which the interpretation reuses
    if world > 1 and (exp.tta or (save and trained_all)):  # every rank predicts its share; rank 0 gathers them
        shared = shared_predictions(learn, mirror=exp.tta)
        if shared is not None:
            tta, *plain = shared
            results.tta_accuracy = tta if exp.tta else None
    elif exp.tta:  # the last validation's predictions, and the mirrored images
        results.tta_accuracy, *plain = flip_tta(learn, keep.kept)
    results.finished = True
    results.wall_time = _wall_time(job)
    if rank > 0:  # one line per other rank, so a launcher's log shows every rank trained; rank 0 goes on alone
        print(f"resnets: rank {rank} of {world} trained {learn.train_iter} batches; rank 0 reports", file=sys.stderr)
        return results
    if folder is None:
        return results
    results.folder = str(folder)
    results.save(folder)  # the trained run is whole (its weights are in the checkpoint) before any extra is drawn
    if trained_all:  # confusion matrix, top losses, per-class accuracy: a failure here leaves the run finished
        try:
            with one_process() if world > 1 else contextlib.nullcontext():  # (the other ranks are done)
                results.per_class_accuracy = interpret(learn, folder, predictions=plain)
        except Exception as e:  # noqa: BLE001 (an extra: say what failed and how to draw it again)
            print(f"resnets: {exp.name} is trained and saved in {folder}, but its interpretation plots failed "
                  f"({type(e).__name__}: {one_line(e)}); draw them again with: resnets interpret {folder}",
                  file=sys.stderr)
        else:
            results.wall_time = _wall_time(job)
            results.save(folder, plot=False)
    return results


def _wall_time(job: _Job) -> float:
    """The run's time in all: this call's, and for a resumed run its earlier epochs' training time (the calls that
    trained them are gone; their start-up is not counted). A finished run reported again is its training time."""
    earlier = sum(h.get("time", 0.0) for h in job.state["history"]) if job.state is not None else 0.0
    return earlier + time.perf_counter() - job.start


def _interrupted(exp: Experiment, folder: Path | None) -> RunInterrupted:
    "What a Ctrl-C leaves: the epochs the checkpoint keeps (what a resume goes on from), and how to go on."
    total = exp.total_epochs
    if folder is None:
        return RunInterrupted(f"interrupted: {exp.name} was not saved (save=False), so there is nothing to resume")
    again = f"run({exp.name!r}, out={str(folder)!r}, resume=True, ...)"
    path = find_checkpoint(folder)
    if path is None:  # stopped before the first epoch's checkpoint was written
        return RunInterrupted(f"interrupted before the first checkpoint of {exp.name} was written: nothing to go on "
                              f"from; {again} starts it again in {folder}", folder=folder)
    saved = len(load_checkpoint(folder)["history"])
    return RunInterrupted(f"interrupted after {saved} of {total} epochs; {path} keeps them: continue with {again}",
                          folder=folder)


def _data_record(exp: Experiment, dls) -> str:
    """Where the run's images are, as its record keeps them: a data set's name as given (the library's lookup finds
    it again on another machine: `interpret`, a moved checkout), else the folder or CSV's folder on this machine."""
    return str(exp.data) if isinstance(exp.data, str) and exp.data.split("/", 1)[0] in DATA_SETS else str(dls.path)


def _command_line() -> list[str]:
    """The command that started the run, as a person would type it again: `resnets ...` from the command line, the
    script's name and arguments from a script; nothing from a notebook (its kernel's arguments are not a command)."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if prog in ("ipykernel_launcher.py", "ipykernel_launcher", "") or prog.startswith("ipykernel"):
        return []
    return ["resnets" if prog in ("resnets", "__main__.py") else prog, *sys.argv[1:]]


def _distributed(learn, world: int):
    "Data-parallel training through fastai + Accelerate when launched by torchrun / accelerate launch."
    if world <= 1:
        return contextlib.nullcontext()
    return learn.distrib_ctx(sync_bn=False, cpu=learn.dls.device.type == "cpu")


def _data_key(exp: Experiment, dls) -> str:
    "The fingerprint of the run's images (and of its CSV of labels), which a checkpoint keeps (checkpoint.fingerprint)."
    csv = Path(str(exp.data)).expanduser()
    extra = csv.read_bytes() if csv.suffix.lower() == ".csv" and csv.is_file() else b""
    return fingerprint(dls.train_ds.items, dls.valid_ds.items, dls.path, extra)


def lr_find(name: str | Experiment, out: str | os.PathLike | None = None, progress: bool = True, **overrides):
    "Run fastai's `lr_find` for an experiment; saves the plot as lr_find.png in `out` when given."
    learn, _ = build(name, **overrides)
    with contextlib.nullcontext() if progress else learn.no_bar():
        suggestion = learn.lr_find(show_plot=out is not None)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_figure(plt.gcf(), Path(out) / "lr_find.png")
        plt.close("all")
    return suggestion


def interpret_run(run_dir: str | os.PathLike, k: int = 9, data: str | None = None) -> dict[str, float]:
    "Rebuild a saved run's Learner from its checkpoint and redraw its interpretation plots into its folder."
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir) if run_dir.is_dir() else None
    if state is None:
        raise MissingFile(f"no trained run at {run_dir}: pass the --out folder of a `resnets run` (it holds "
                          f"{CHECKPOINT})")
    s = state["settings"]
    # the checkpoint holds the trained weights: no budget to plan, no earlier run to start from (it may be gone)
    exp = Experiment.from_dict(s, data=data or s["data"], budget=None, init=None)
    learn, _ = build(exp, verbose=False)  # its ImageSizes validates at the run's final size
    check_fits(learn, state, find_checkpoint(run_dir))
    learn.model.load_state_dict(state["model"])
    learn.model.to(learn.dls.device)  # an inner validation skips the fit's move to the data's device
    per_class = interpret(learn, run_dir, k)
    if (run_dir / "results.json").is_file():  # the record gets what a failed interpretation left out of it
        results = load_results(run_dir)
        if results.per_class_accuracy != per_class:
            results.per_class_accuracy = per_class
            results.save(run_dir, plot=False)
    return per_class
