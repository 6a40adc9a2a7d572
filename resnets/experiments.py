"""`build()` and `run()`: an experiment's settings (resnets.config) made into a Learner and trained, the one code
path behind Python, CLI and notebooks. Every epoch is recorded, checkpointed and compared with the book."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.learner import Recorder
from fastai.torch_core import num_distrib, rank_distrib, set_seed
from fastcore.foundation import L

from .checkpoint import CHECKPOINT, Checkpoint, StopOnNaN, load_checkpoint, set_deterministic
from .config import CHAPTER, EXPERIMENTS, OPTIONS, Experiment, configure, get_experiment, list_experiments
from .data import get_data, set_image_size
from .errors import InputError, RunExists, RunInterrupted
from .finetune import body_head_splitter, load_body
from .learner import (
    OPT_FUNCS,
    RECALIBRATION_IMAGES,
    BatchNormRecalibration,
    WeightAverage,
    accuracy_metric,
    fit_flat_cos,
    get_learner,
    in_last_epochs,
    top_5_metric,
)
from .models import create_model
from .results import Results, describe_device, load_results, save_figure, versions

__all__ = ["Experiment", "OPTIONS", "EXPERIMENTS", "CHAPTER", "get_experiment", "list_experiments", "configure",
           "build", "run", "lr_find", "plan_budget", "flip_tta", "flip_tta_accuracy"]


class EpochLog(Callback):
    """Each epoch's row as people read it: fastai's table on a terminal; without one (a log file), a header and
    values rounded to 4 decimals instead of Python lists. Epochs skipped by a resumed run are not printed."""

    order = 61  # after fastai's ProgressCallback (60) has put its table writer in `learn.logger`

    def __init__(self, start_epoch: int = 0):
        self.start_epoch = start_epoch

    def before_fit(self):
        self.inner, plain, widths = self.learn.logger, not hasattr(self.learn, "progress"), []

        def log(row):
            if not row or row[0] == "epoch" or not plain:  # a header (from the table writer), or the table's row
                if row and isinstance(row[0], int) and row[0] < self.start_epoch:
                    return
                return self.inner(row)
            if row[0] < self.start_epoch or rank_distrib() > 0:  # resumed epochs; other ranks: rank 0 reports
                return
            if not widths:  # the header, once, above the first row
                names = self.recorder.metric_names
                widths.extend(max(len(n), 7) for n in names)
                print("  ".join(f"{n:>{w}}" for n, w in zip(names, widths)), flush=True)
            row = [*row[:-1], *[None] * (len(widths) - len(row)), row[-1]]  # a skipped validation: "-" each
            cells = [f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v) for v in row]
            print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)), flush=True)

        self.log = log
        self.learn.logger = log

    def after_fit(self):
        if self.learn.logger is getattr(self, "log", None):
            self.learn.logger = self.inner


class RunHistory(Callback):
    "Copies each finished epoch's losses, metrics and seconds into a `Results`, and saves it there and then."

    order = Recorder.order + 1  # after the Recorder has written the epoch's values

    def __init__(self, results: Results, folder: Path | None, start_epoch: int = 0, started: float | None = None):
        self.results, self.folder, self.start_epoch = results, folder, start_epoch
        self.started = time.perf_counter() if started is None else started  # the run's start, for `elapsed`

    def before_epoch(self):
        self.start = time.perf_counter()

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # skipped when resuming: already in the history
            return
        names = self.recorder.metric_names[1:-1]  # drop 'epoch' and 'time'
        # numbered on from the run's earlier epochs: fine_tune's second fit counts from 0 again
        values = list(self.learn.final_record)  # fastai leaves a skipped validation's values out (SkipValidation):
        values += [None] * (len(names) - len(values))  # they come after the training loss; None in the history
        row = {"epoch": len(self.results.history),
               **{n: None if v is None else float(v) for n, v in zip(names, values)}}  # fmt: skip
        row["time"] = time.perf_counter() - self.start
        row["elapsed"] = time.perf_counter() - self.started  # since the command started (this call's, on resume)
        self.results.history.append(row)
        if self.folder is not None:
            self.results.save(self.folder, plot=False)


def build(name: str | Experiment, cbs=None, verbose: bool = True, **overrides):
    """The experiment's Learner on its data, ready for `lr_find` or `fit_one_cycle`, and the configured experiment.

    `overrides` are `configure`'s (data=..., size=..., fast_data=True, ...)."""
    exp = configure(name, verbose=verbose, **overrides)
    if exp.seed is not None:  # each rank its own augmentation draws, reproducibly (seed + rank, as timm does); DDP
        # copies rank 0's initial weights to every rank. CPU runs repeat exactly; on a GPU kernels may still vary.
        set_seed(exp.seed + rank_distrib())
    dls = get_data(exp.data, exp.presize, exp.train_size(0), exp.bs, classes=exp.classes, subset=exp.subset,
                   num_workers=exp.num_workers, flip=exp.flip, fast=exp.fast_data, holdout=exp.holdout,
                   valid_pct=exp.valid_pct, label_col=exp.label_col, seed=42 if exp.seed is None else exp.seed,
                   augment=exp.augment)  # fmt: skip
    if len(dls.train_ds) < exp.bs:  # fastai drops the last partial training batch: nothing would train
        raise InputError(f"the training set has {len(dls.train_ds)} images, fewer than one batch of {exp.bs}: "
                         f"use a batch size of at most {len(dls.train_ds)} (--bs) or more images")  # fmt: skip
    model = create_model(exp.model, n_out=dls.c, zero_gamma=exp.zero_gamma, width=exp.width, stem=exp.stem)
    _check_input_size(model, exp)
    if exp.init is not None:
        load_body(model, exp.init, exp.model, exp.width, exp.stem)
    if exp.fast_data:  # channels-last convolutions: ~20 % faster epochs on CPU (PERFORMANCE.md), same accuracy;
        # the model's layout is enough (a contiguous batch comes out of the first conv channels-last). Done here, not
        # with fastai's ChannelsLast callback, so that `bench profile`'s own step loop times the same model.
        model = model.to(memory_format=torch.channels_last)
    cbs = [ImageSizes(exp), *([WeightAverage(exp.ema)] if exp.ema else []),
           *([BatchNormRecalibration()] if exp.recalibrate_bn else []),
           *([SkipValidation(exp.valid_last)] if exp.valid_last else []), *L(cbs)]  # fmt: skip
    learn = get_learner(dls, model, precision=exp.precision, cbs=cbs, metrics=[accuracy_metric(), top_5_metric()],
                        label_smoothing=exp.label_smoothing, mixup=exp.mixup, verbose=verbose,
                        splitter=body_head_splitter, opt_func=OPT_FUNCS[exp.opt])  # fmt: skip
    return learn, exp


class ImageSizes(Callback):
    """Sets the batch augmentation's size before each phase: the epoch's training size (progressive resizing,
    `sizes` stretched over each fit's epochs: with `init`, over fine_tune's head-only fit and again over its main
    one), which earlier epochs also validate at (as a fastai user changing `learn.dls` between phases does), and
    `valid_size` (`test_size`, or the last training size) for the last epoch's validation and everything after
    the fit. With one size throughout it stays off for the fit."""

    order = -20  # before anything draws a batch

    def __init__(self, exp: Experiment):
        self.exp = exp

    def before_fit(self):
        if not (self.exp.sizes or self.exp.test_size):  # one size throughout: nothing to change
            self.run = False

    def before_train(self):
        set_image_size(self.dls, self.exp.train_size(self.epoch, self.n_epoch))

    def before_validate(self):
        last = in_last_epochs(self.learn)  # a Learner never fitted: as after a fit
        set_image_size(self.dls, self.exp.valid_size if last else self.exp.train_size(self.epoch, self.n_epoch))

    def after_fit(self):
        set_image_size(self.dls, self.exp.valid_size)  # predict, get_preds, Interpretation: as validated


def _device_autocast(learn):
    "The autocast the learner trains under (fp16/bf16 on CUDA), for evaluation outside fastai's loop."
    if learn.precision == "fp32" or learn.dls.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if learn.precision == "fp16" else torch.bfloat16)


class SkipValidation(Callback):
    "Skips the validation of a fit's epochs before its last `n` (their metrics are left empty: None in the history)."

    order = 65  # after the Recorder (50) has reset the metrics and fastai's progress bar has begun the phase

    def __init__(self, n: int):
        self.n, self.fitting = n, False

    def before_fit(self):
        self.fitting = True

    def after_fit(self):
        self.fitting = False

    def before_validate(self):
        if self.fitting and not in_last_epochs(self.learn, self.n):
            raise CancelValidException()


class LastValidPreds(Callback):
    "Keeps the logits and targets of each fit's last validation: flip TTA reuses them instead of predicting again."

    def before_fit(self):
        self.kept, self.on = None, False

    def before_validate(self):
        self.on, self.logits, self.targs = in_last_epochs(self.learn), [], []

    def after_batch(self):
        if self.on and not self.training:
            self.logits.append(self.pred.detach().float().cpu())
            self.targs.append(self.yb[0].detach().as_subclass(torch.Tensor).cpu())

    def after_validate(self):
        if self.on and self.logits:
            self.kept = (torch.cat(self.logits), torch.cat(self.targs))
        self.on = False


@torch.no_grad()
def flip_tta(learn, plain: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Validation accuracy with each image's and its mirror image's class probabilities averaged; and the plain
    images' logits and targets, in the validation set's order (what the interpretation plots need). `plain`: those
    logits and targets from the model as it is now (the last validation's, `LastValidPreds`): only the mirrored
    images are predicted then."""
    if plain is not None and len(plain[0]) != len(learn.dls.valid_ds):  # e.g. one rank's share of a distributed run
        plain = None
    model, flipped, logits, targs = learn.model.eval(), [], [], []
    with _device_autocast(learn):
        for xb, yb in learn.dls.valid:
            x = xb.as_subclass(torch.Tensor)
            if plain is None:
                logits.append(model(x).float().cpu())
            flipped.append(model(x.flip(-1)).float().softmax(1).cpu())
            targs.append(yb.as_subclass(torch.Tensor).cpu())
    if not targs:
        return 0.0, torch.empty(0), torch.empty(0, dtype=torch.long)
    targs = torch.cat(targs)
    if plain is not None and not torch.equal(plain[1], targs):
        raise RuntimeError("the kept validation predictions are not of the validation images in order")
    logits = plain[0] if plain is not None else torch.cat(logits)
    hits = ((logits.softmax(1) + torch.cat(flipped)).argmax(1) == targs).sum().item()
    return hits / len(targs), logits, targs


def flip_tta_accuracy(learn) -> float:
    "Validation accuracy with each image's and its mirror image's class probabilities averaged."
    return flip_tta(learn)[0]


def _time_steps(learn, size: int, steps: int = 3) -> float:
    """Seconds per training step at `size`, data loading and augmentation included: a copy of the model (the run's
    own is not touched), timed on real batches by the benchmarks' `step_stages`."""
    import copy

    from .bench import step_stages

    set_image_size(learn.dls, size)
    model = copy.deepcopy(learn.model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # the step's cost, not fastai's bookkeeping
    warmup = 1 if len(learn.dls.train) > 1 else 0
    steps = max(1, min(steps, len(learn.dls.train) - warmup))
    stages, _ = step_stages(model, opt, torch.nn.functional.cross_entropy, learn.dls.train, steps, warmup,
                            cast=lambda: _device_autocast(learn))  # fmt: skip
    return sum(stages.values()) / steps


@torch.no_grad()
def _time_validation(learn, size: int, batches: int = 2) -> float:
    "Seconds for a whole validation pass at `size`, from the first few batches."
    set_image_size(learn.dls, size)
    model, it, n, start = learn.model.eval(), iter(learn.dls.valid), 0, time.perf_counter()
    with _device_autocast(learn):
        for _ in range(min(batches, len(learn.dls.valid))):
            xb, _ = next(it)
            model(xb.as_subclass(torch.Tensor))
            n += len(xb)
    del it
    return (time.perf_counter() - start) / max(n, 1) * len(learn.dls.valid_ds)


def plan_budget(learn, exp: Experiment, spent: float) -> tuple[Experiment, dict]:
    """The experiment with as many epochs as fit in `exp.budget` seconds, given `spent` already: each training size
    of the schedule and the validation are timed here, on this machine; the schedule (one-cycle or flat-cosine) then
    spans the epochs that fit."""
    start = time.perf_counter()
    n_batches = len(learn.dls.train)
    sizes = sorted(set(exp.sizes or (exp.size,)))
    step = {sz: _time_steps(learn, sz) for sz in sizes}
    valid = _time_validation(learn, exp.valid_size) * 1.1  # metrics and bookkeeping on top of the forward passes
    set_image_size(learn.dls, exp.train_size(0))
    overhead = 0.5  # per epoch: results.json, checkpoint, plot
    final = valid + 2.0  # flip TTA's mirrored pass, or the interpretation's pass (TTA's is reused); plots
    if exp.recalibrate_bn:  # a forward pass over (at most) 1,024 training images before the last validation
        final += valid * min(RECALIBRATION_IMAGES, len(learn.dls.train_ds)) / max(len(learn.dls.valid_ds), 1)

    def predicted(epochs: int) -> float:
        train = sum(step[exp.train_size(e, epochs)] * n_batches for e in range(epochs))
        validated = min(epochs, exp.valid_last or epochs)
        return train + epochs * overhead + validated * valid + final

    left = exp.budget - spent - (time.perf_counter() - start)
    epochs = 0
    while predicted(epochs + 1) <= left:
        epochs += 1
    least = spent + (time.perf_counter() - start) + predicted(1)
    if epochs == 0:
        raise InputError(f"a budget of {exp.budget:.0f} s is too small for one epoch of {exp.name} here: set-up took "
                         f"{spent:.0f} s and one epoch takes about {predicted(1):.0f} s, so at least "
                         f"--budget {math.ceil(least)}")  # fmt: skip
    plan = {"budget": exp.budget, "epochs": epochs, "predicted_s": spent + (time.perf_counter() - start) +
            predicted(epochs), "step_s": {str(k): v for k, v in step.items()}, "valid_s": valid}  # fmt: skip
    return replace(exp, epochs=epochs), plan


def _check_input_size(model, exp: Experiment) -> None:
    "A model that is not fully convolutional accepts one size only: say so before training, not deep in torch."
    fixed = getattr(model, "input_size", None)
    if fixed is not None and exp.size != fixed:
        raise InputError(f"model {exp.model!r} cannot take {exp.size} px images (it is not fully convolutional): "
                         f"use its experiment's size, {fixed} px")  # fmt: skip


def _check_free(out: str | os.PathLike) -> None:
    if not (Path(out) / "results.json").exists():
        return
    done = load_results(out)
    if not done.finished and (Path(out) / CHECKPOINT).exists():
        n, total = len(done.history), done.settings.get("epochs", "?")
        raise RunExists(f"{out} holds an unfinished run ({n} of {total} epochs): continue it with resume=True "
                        "(--resume), or choose another output folder", folder=out, unfinished=True)  # fmt: skip
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
    **overrides,
) -> Results:
    """Train an experiment with `fit_one_cycle` (fastai's `fine_tune` with `init`); `overrides` (any of `OPTIONS`)
    change the chapter's settings.

    Every epoch is saved into `out` (results.json, and checkpoint.pth for `resume`). `resume=True` continues the
    run in `out` from its last checkpoint with the same settings (a fresh start if it has none)."""
    start = time.perf_counter()
    exp = configure(name, verbose=rank_distrib() == 0, **overrides)
    if resume and exp.init is not None:
        raise InputError("a fine-tuning run (init) cannot be resumed yet: start it again (it is short)")
    if resume and (out is None or not save):
        raise InputError("resume needs the run's folder: pass out=FOLDER (--out) of the run to continue")
    state = load_checkpoint(out) if resume else None
    if not resume and save and out is not None:
        _check_free(out)  # before any work (resuming a run killed before its first checkpoint starts it again)
    world, rank = num_distrib(), rank_distrib()
    if world > 1 and (resume or exp.fast_data):
        raise InputError("distributed runs (torchrun / accelerate launch) support neither --resume nor --fast-data yet")
    if world > 1:
        try:
            import accelerate  # noqa: F401  (fastai's distrib_ctx is built on it: without, a bare NameError)
        except ImportError:
            raise InputError("distributed runs need Hugging Face Accelerate: pip install 'resnets[distributed]'") \
                from None
    set_deterministic(exp.deterministic)
    learn, exp = build(exp, verbose=rank == 0)
    dls, plan = learn.dls, None
    if exp.budget is not None and state is not None:  # a resumed budget run keeps the schedule it planned
        exp, plan = replace(exp, epochs=state["settings"]["epochs"]), state["settings"].get("budget_plan")
    elif exp.budget is not None:
        exp, plan = plan_budget(learn, exp, time.perf_counter() - start)
        if rank == 0:
            print(f"resnets: {plan['epochs']} epoch(s) fit the budget of {exp.budget:.0f} s on this machine "
                  f"(predicted {plan['predicted_s']:.0f} s in all)")  # fmt: skip
    settings = {**exp.settings, "data": str(dls.path), "precision": learn.precision, "n_train": len(dls.train_ds),
                "n_valid": len(dls.valid_ds), "n_classes": dls.c, "argv": sys.argv}  # fmt: skip
    if plan is not None:
        settings["budget_plan"] = plan
    if world > 1:
        settings.update(world_size=world)
    results = Results(exp.name, settings, exp.seed, versions=versions(), device=describe_device(dls.device),
                      book=exp.book, learn=learn)  # fmt: skip
    if state is not None:
        _check_same_settings(state["settings"], settings, out)
        results.history = list(state["history"])
        if state["epoch"] + 1 >= exp.epochs:
            print(f"resnets: {out} finished all {exp.epochs} epochs already")
    folder = None if not save or rank > 0 else Path(out) if resume else _new_run_folder(out, exp.name)
    if resume:
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(folder, results, state)
    if state is not None:
        checkpoint.restore(learn)
        print(f"resnets: resuming {folder} after epoch {state['epoch'] + 1} of {exp.epochs}")
    keep = LastValidPreds()
    run_cbs = [RunHistory(results, folder, checkpoint.start_epoch, start), checkpoint, StopOnNaN(folder),
               EpochLog(checkpoint.start_epoch), *([keep] if exp.tta else [])]
    learn.add_cbs(run_cbs)
    try:
        with contextlib.nullcontext() if progress else learn.no_bar(), _distributed(learn, world):
            if exp.init is not None:  # fastai's schedule: the new head alone, then every layer (the body slower)
                learn.fine_tune(exp.epochs, exp.lr, freeze_epochs=exp.freeze_epochs, lr_mult=exp.lr_mult)
            else:
                fit = partial(fit_flat_cos, learn) if exp.schedule == "flat_cos" else learn.fit_one_cycle
                fit(exp.epochs, exp.lr, start_epoch=checkpoint.start_epoch)
    except torch.cuda.OutOfMemoryError as e:
        more = f" and --resume to continue {folder}" if folder is not None else ""
        msg = f"out of GPU memory at batch size {exp.bs} ({e}): try --bs {max(1, exp.bs // 2)}{more}"
        raise MemoryError(msg) from None
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint is whole (written atomically); say how to go on
        done = len(results.history)
        if folder is None or not (folder / CHECKPOINT).exists():
            raise RunInterrupted(f"interrupted before the first epoch of {exp.name} finished: nothing to resume") \
                from None
        raise RunInterrupted(f"interrupted after {done} of {exp.epochs} epochs; {folder / CHECKPOINT} keeps the last "
                             f"one: continue with run({exp.name!r}, out={str(folder)!r}, resume=True, ...)",
                             folder=folder) from None  # fmt: skip
    finally:  # results.learn goes on as a plain Learner: more training in a notebook writes nothing into the run
        learn.remove_cbs(run_cbs)
    if rank > 0:  # one line per other rank, so a launcher's log shows every rank trained
        print(f"resnets: rank {rank} of {world} trained {learn.train_iter} batches; rank 0 reports", file=sys.stderr)
    plain = None  # the plain images' logits and targets, which the interpretation reuses
    if exp.tta:  # the last validation's predictions, and the mirrored images
        results.tta_accuracy, *plain = flip_tta(learn, keep.kept)
    trained_all = len(results.history) >= exp.epochs + (exp.freeze_epochs if exp.init else 0)
    if folder is not None and world <= 1 and trained_all:  # confusion matrix, top losses, per-class accuracy
        # (distributed runs: the other ranks have gone; `resnets interpret RUN_DIR` draws them in one process)
        from .interpret import interpret

        results.per_class_accuracy = interpret(learn, folder, predictions=plain)
    results.finished = True
    results.wall_time = time.perf_counter() - start  # of this call (a resumed run's earlier calls not included)
    if folder is not None:
        results.folder = str(folder)
        results.save(folder)
    return results


def _distributed(learn, world: int):
    "Data-parallel training through fastai + Accelerate when launched by torchrun / accelerate launch."
    if world <= 1:
        return contextlib.nullcontext()
    from . import distributed  # noqa: F401  (lets fastai's distributed loader run on CPU, over gloo)

    return learn.distrib_ctx(sync_bn=False, cpu=learn.dls.device.type == "cpu")


def _check_same_settings(saved: dict, now: dict, out) -> None:
    ignore = {"argv", "data"}  # the command line differs by --resume; a moved data folder is still the data
    older = {f.name: f.default for f in fields(Experiment) if f.metadata.get("option") and f.name not in saved}
    saved = {**older, **saved}
    diff = {k: (saved.get(k), now.get(k)) for k in (set(saved) | set(now)) - ignore if saved.get(k) != now.get(k)}
    if diff:
        shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise InputError(f"cannot resume {out} with different settings ({shown}): use the run's own options")


def lr_find(name: str | Experiment, out: str | os.PathLike | None = None, progress: bool = True, **overrides):
    "Run fastai's `lr_find` for an experiment; saves the plot as lr_find.png in `out` when given."
    learn, _ = build(name, **overrides)
    with contextlib.nullcontext() if progress else learn.no_bar():
        suggestion = learn.lr_find(show_plot=out is not None)
    if out is not None:
        import matplotlib.pyplot as plt

        Path(out).mkdir(parents=True, exist_ok=True)
        save_figure(plt.gcf(), Path(out) / "lr_find.png")
        plt.close("all")
    return suggestion
