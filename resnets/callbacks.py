"""Every callback of the library, and the order fastai runs them in.

fastai calls a Learner's callbacks at each event in ascending `order`. Its own, and ours among them:

  order  callback                  what it does, and why it sits there
  -----  ------------------------  ------------------------------------------------------------------------------
   -20   ImageSizes                sets the batch augmentation's size for the phase: before anything draws a batch
   -10   TrainEvalCallback         (fastai) puts the model in train/eval mode and on the data's device
    -9   StopOnNaN                 (fastai's TerminateOnNaNCallback) a NaN or infinite loss ends the run, clearly
     0   LastValidPreds            keeps the last validation's logits, for flip TTA and the interpretation
     5   WeightAverage             swaps in the weight average before the Recorder (50) scores a validation
    10   MixedPrecision            (fastai) autocast and the loss scaler
    10   BatchNormRecalibration    after WeightAverage (5): it re-estimates the statistics of the weights scored
    50   Recorder                  (fastai) the epoch's losses and metrics
    51   RunHistory                after the Recorder: copies its epoch into results.json
    51   TensorBoardCallback /     (fastai's, --log tensorboard / wandb; made by `loggers`) after the Recorder: log
         WandbCallback             its epoch
    60   ProgressCallback          (fastai) the progress bars and the table writer (learn.logger)
    61   EpochLog                  after ProgressCallback has put its table writer in place: replaces it in logs
    62   Checkpoint                after RunHistory (51): the checkpoint holds the epoch just recorded
    63   CSVLogger (--log csv)     (fastai's) after EpochLog (61): writes the epoch's row, then hands it to EpochLog
    65   SkipValidation            after the Recorder and the progress bar have begun the phase, then cancels it

Two of fastai's extension points the library uses live elsewhere, with what they belong to: `learner.ValidLoss`
is a metric (fastai's AvgLoss, which the Recorder holds, not a callback of the Learner), beside the other metrics
that are exact in distributed runs; the profiler's `profiling._Edge` is not a callback of any run, only of
`resnets bench profile`'s instrumented fit, which it stamps first and last (orders -10**6 and 10**6).

Checkpoint's `before_fit` also depends on this order: it runs after TrainEvalCallback (-10) has moved the model
(so the optimiser state goes where the parameters are), after MixedPrecision (10) has made its loss scaler and
after the Recorder (50) has reset its smoothed loss, so that it can put back the saved ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import TerminateOnNaNCallback
from fastai.learner import Recorder
from fastai.torch_core import rank_distrib
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import (
    TrainingDiverged,
    find_checkpoint,
    load_checkpoint,
    rank_state,
    restore_training_state,
    save_checkpoint,
)
from .config import Experiment
from .data import set_image_size
from .errors import InputError
from .evaluate import RECALIBRATION_IMAGES, recalibrate_bn
from .learner import unwrap
from .results import Results

__all__ = ["ORDERS", "in_last_epochs", "ImageSizes", "StopOnNaN", "LastValidPreds", "WeightAverage",
           "BatchNormRecalibration", "RunHistory", "EpochLog", "Checkpoint", "SkipValidation", "loggers"]

ORDERS = {"ImageSizes": -20, "StopOnNaN": -9, "LastValidPreds": 0, "WeightAverage": 5, "BatchNormRecalibration": 10,
          "RunHistory": Recorder.order + 1, "EpochLog": ProgressCallback.order + 1, "Checkpoint": Recorder.order + 2,
          "CSVLogger": ProgressCallback.order + 3, "SkipValidation": 65}


def in_last_epochs(learn, n: int = 1) -> bool:
    """Whether `learn` is in the last `n` epochs of its fit. Outside a fit it counts as in its last one: a Learner
    never fitted, and fastai's get_preds, validate and predict (also show_results), which wrap their pass in the fit
    events (before_fit sets the epoch to 0) but train nothing: no batch trained since before_fit."""
    epoch, n_epoch = getattr(learn, "epoch", None), getattr(learn, "n_epoch", None)
    return epoch is None or n_epoch is None or not getattr(learn, "train_iter", 0) or epoch >= n_epoch - n


class ImageSizes(Callback):
    """Sets the batch augmentation's size before each phase: the epoch's training size (progressive resizing,
    `sizes` stretched over each fit's epochs: with `init`, over fine_tune's head-only fit and again over its main
    one), which earlier epochs also validate at (as a fastai user changing `learn.dls` between phases does), and
    `valid_size` (`test_size`, or the last training size) for the last epoch's validation and everything after
    the fit. With one size throughout it stays off for the fit."""

    order = ORDERS["ImageSizes"]

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


class StopOnNaN(TerminateOnNaNCallback):
    """fastai's TerminateOnNaNCallback, raising an error that names the epoch, the batch, the learning rate and
    what to try (and where the last good epoch is kept) instead of ending the fit without a word."""

    order = ORDERS["StopOnNaN"]

    def __init__(self, folder: Path | None = None):
        self.folder = folder

    def after_batch(self):
        if self.training and not torch.isfinite(self.learn.loss).all():
            lr = self.opt.hypers[-1]["lr"] if self.opt is not None else None
            where = f"epoch {self.epoch + 1}, batch {self.iter + 1} of {self.n_iter}"
            msg = f"the training loss became {self.learn.loss.item()} at {where}"
            if lr is not None:
                msg += f" (learning rate {lr:.2g} at that step)"
            msg += ": try a lower maximum learning rate (--lr), e.g. a third of this run's"
            if self.folder is not None and (kept := find_checkpoint(self.folder)):
                try:  # a checkpoint that holds NaN weights itself is no good epoch to go back to
                    load_checkpoint(self.folder)
                    msg += f". The last good epoch is kept in {kept}"
                except InputError as e:
                    msg += f". The last checkpoint cannot be gone on from either ({e})"
            raise TrainingDiverged(msg)


class LastValidPreds(Callback):
    "Keeps the logits and targets of each fit's last validation: flip TTA reuses them instead of predicting again."

    order = ORDERS["LastValidPreds"]

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


class WeightAverage(Callback):
    """An exponential moving average of the weights and BatchNorm statistics (torch's `AveragedModel`), updated after
    every optimiser step. Each validation scores the average, and the model keeps it from then until the next
    training epoch begins, so the checkpoint, the final model, test-time augmentation and export all use it;
    training itself carries on from its own weights. A resumed run starts a new average."""

    order = ORDERS["WeightAverage"]

    def __init__(self, decay: float = 0.99):
        if not 0 < decay < 1:
            raise InputError(f"the weight average's decay must be between 0 and 1, e.g. 0.99; got {decay!r}")
        self.decay, self.trained = decay, None

    def before_fit(self):
        self.average = AveragedModel(unwrap(self.learn.model), multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                     use_buffers=True)
        self.trained = None

    def after_step(self):
        self.average.update_parameters(unwrap(self.learn.model))

    def before_validate(self):
        if not hasattr(self, "average"):  # validate() before any fit: nothing averaged yet
            return
        model = unwrap(self.learn.model)
        if self.trained is None:  # the training weights, put back when training resumes
            self.trained = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average.module.state_dict())

    def before_train(self):
        if self.trained is not None:
            unwrap(self.learn.model).load_state_dict(self.trained)
            self.trained = None

    def after_fit(self):  # a fit without validation ends with the average too
        if self.trained is None:
            unwrap(self.learn.model).load_state_dict(self.average.module.state_dict())


class BatchNormRecalibration(Callback):
    "`recalibrate_bn` before the last epoch's validation, so the final score, checkpoint and model all use it."

    order = ORDERS["BatchNormRecalibration"]

    def __init__(self, n: int = RECALIBRATION_IMAGES):
        self.n, self.done = n, False

    def before_train(self):  # not before_fit: fastai's get_preds fires that too, and must keep these statistics
        self.done = False

    def before_validate(self):  # once a fit: later validations (the interpretation pass) keep these statistics
        if not self.done and in_last_epochs(self.learn):
            recalibrate_bn(self.learn, self.n)
            self.done = True


class RunHistory(Callback):
    "Copies each finished epoch's losses, metrics and seconds into a `Results`, and saves it there and then."

    order = ORDERS["RunHistory"]

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
               **{n: None if v is None else float(v) for n, v in zip(names, values)}}
        row["time"] = time.perf_counter() - self.start
        row["elapsed"] = time.perf_counter() - self.started  # since the command started (this call's, on resume)
        self.results.history.append(row)
        if self.folder is not None:
            self.results.save(self.folder, plot=False)


class EpochLog(Callback):
    """Each epoch's row as people read it: fastai's table on a terminal; without one (a log file), a header and
    values rounded to 4 decimals instead of Python lists. Epochs skipped by a resumed run are not printed."""

    order = ORDERS["EpochLog"]

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


class Checkpoint(Callback):
    """Saves `checkpoint.safetensors` after every epoch; given a loaded checkpoint, restores it before training goes on.

    In a data-parallel run every rank makes one (`gather`): each hands its random state to rank 0, which writes the
    file with them all (`folder` is None on the other ranks), and each resumes with its own (`rank`)."""

    order = ORDERS["Checkpoint"]

    def __init__(self, folder: Path | None, results: Results, state: dict | None = None, gather: bool = False):
        self.folder, self.results, self.state, self.gather = folder, results, state, gather
        self.start_epoch = state["epoch"] + 1 if state else 0

    def before_fit(self):
        if self.state is not None:  # the optimiser's, the loss scaler's and the smoothed loss (see the table)
            restore_training_state(self.learn, self.state, rank_distrib())
            self.state = None  # once: fine_tune's second fit goes on from the first's state, not the checkpoint's

    def after_epoch(self):
        if self.epoch < self.start_epoch:
            return
        ranks = None
        if self.gather:  # every rank takes part, in step: rank 0 receives each one's random state
            import torch.distributed as dist

            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, rank_state(self.learn))
        if self.folder is not None:
            start = time.perf_counter()
            save_checkpoint(self.learn, self.results, self.folder, ranks)
            # after the epoch's `time` (a GPU's checkpoint goes through the CPU: hundreds of MB for a ResNet-50), so
            # kept beside it: in results.json from the next save on, and in the checkpoints after this one
            self.results.history[-1]["checkpoint_s"] = time.perf_counter() - start


class SkipValidation(Callback):
    "Skips the validation of a fit's epochs before its last `n` (their metrics are left empty: None in the history)."

    order = ORDERS["SkipValidation"]

    def __init__(self, n: int):
        self.n, self.fitting = n, False

    def before_fit(self):
        self.fitting = True

    def after_fit(self):
        self.fitting = False

    def before_validate(self):
        if self.fitting and not in_last_epochs(self.learn, self.n):
            raise CancelValidException()


def loggers(kind: str | None, folder: Path | None, settings: dict, append: bool, rank: int) -> list:
    """fastai's logger callback for `--log`: csv, tensorboard or wandb (rank 0 only; removed after the fit with the
    run's other callbacks, so that the Learner exports afterwards: fastai's CSVLogger keeps a closed file handle).
    wandb's is made here, not at module level, because wandb is an optional install."""
    if kind is None or rank > 0:
        return []
    if folder is None:
        raise InputError(f"--log {kind} writes into the run folder: leave save on (it is off here)")
    if kind == "csv":
        # absolute: fastai reads a relative name from the Learner's path, the data's folder
        logger = CSVLogger(fname=str(Path(folder).absolute() / "history.csv"), append=append)
        logger.order = ORDERS["CSVLogger"]  # wraps EpochLog's table writer, or it would never be called
        return [logger]
    if kind == "tensorboard":
        try:
            from fastai.callback.tensorboard import TensorBoardCallback
        except ImportError as e:
            raise InputError("--log tensorboard needs tensorboard: pip install tensorboard") from e
        return [TensorBoardCallback(log_dir=str(folder / "tensorboard"), trace_model=False)]
    try:
        import wandb
        from fastai.callback.wandb import WandbCallback
    except ImportError as e:
        raise InputError("--log wandb needs wandb: pip install wandb") from e

    class RunSettingsWandb(WandbCallback):
        """fastai's WandbCallback, logging the run's settings (given to wandb.init) in place of fastai's gathered
        init arguments, which fail on the data's file paths (fastai 2.8.12, Python 3.11: a Path has no __dict__);
        `finish` ends the wandb run once the run's fits are over (fine-tuning has two)."""

        def before_fit(self):
            self.learn.gather_args = dict  # an instance attribute over fastai's method: nothing gathered
            try:
                super().before_fit()
            finally:
                del self.learn.gather_args

        def finish(self):
            wandb.finish()

    os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine unless asked (wandb sync later)
    wandb.init(project="resnets", name=folder.name, dir=str(folder), config=settings, resume="allow")
    return [RunSettingsWandb(log_preds=False, log_model=False)]
