"""The chapter's five experiments as data, and `run()`, the one code path behind Python, CLI and notebooks.

Each `Experiment` is a frozen record of every setting a run needs (model, data, sizes, schedule,
regularisation, precision, seed ...) and the book's per-epoch reference (validation accuracy and loss,
seconds per epoch on the authors' 2020 GPU). A setting is declared once, as a field: `configure(name,
**overrides)` applies overrides with one `replace` (the record checks itself), and the command line's
options are made from the same fields (`OPTIONS`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.torch_core import num_distrib, rank_distrib, set_seed

from .checkpoint import Checkpoint, StopOnNaN, load_checkpoint, set_deterministic
from .data import _check_subset, get_data
from .errors import InputError, RunExists, check_number
from .learner import PRECISIONS, accuracy_metric, check_regularisation, get_learner, top_5_metric
from .models import MODELS, create_model
from .results import Results, describe_device, save_figure, versions

__all__ = ["Experiment", "OPTIONS", "EXPERIMENTS", "CHAPTER", "get_experiment", "list_experiments", "configure",
           "build", "run", "lr_find"]


def _parse_classes(s: str) -> int | list[str]:
    return int(s) if s.isdigit() else [c for c in s.split(",") if c]


def _option(default, help: str, type=None, flag: str | None = None, **cli):
    "A setting of an experiment: its default, and how the command line and the docs describe it."
    return field(default=default, metadata={"option": True, "help": help, "type": type, "flag": flag, "cli": cli})


@dataclass(frozen=True)
class Experiment:
    """One experiment: every setting a run needs, checked when the record is made. `configure` and `run` take
    overrides of the `OPTIONS` fields; the command line's options are made from the same fields."""

    name: str
    title: str = ""
    model: str = _option("resnet18", "the network (a name of resnets.models.MODELS)", str, metavar="MODEL")
    data: str | os.PathLike = _option("imagenette-160", "a folder with train/ and val/, a name (imagenette-160, "
                                      "...) or a URL", str, metavar="PATH")  # fmt: skip
    presize: int = _option(160, "size images are first resized (and cropped) to, before augmentation", int,
                           metavar="PX")  # fmt: skip
    size: int = _option(128, "training image size in pixels (the chapter's `resize`)", int, metavar="PX")
    bs: int = _option(128, "batch size", int, metavar="N")
    subset: int | tuple[int, int] | None = _option(None, "at most N images per class in each split (a fixed "
                                                   "sample)", int, metavar="N")  # fmt: skip
    classes: int | tuple[str, ...] | None = _option(None, "the first N classes, or a comma-separated list of class "
                                                    "folders", _parse_classes, metavar="N|a,b")  # fmt: skip
    epochs: int = _option(5, "number of epochs", int, metavar="N")
    lr: float = _option(3e-3, "maximum learning rate of the one-cycle schedule", float, metavar="LR")
    flip: bool = _option(True, "random horizontal flips in the augmentation (--no-flip for digits)", bool)
    label_smoothing: float = _option(0.0, "label smoothing eps, e.g. 0.1 (0: off)", float, metavar="EPS")
    mixup: float = _option(0.0, "MixUp with this Beta alpha, e.g. 0.4 (0: off)", float, metavar="ALPHA")
    zero_gamma: bool = _option(True, "start each residual branch's last BatchNorm at 0 (--no-zero-gamma: at 1)", bool)
    fast_data: bool = _option(False, "decode the images once into a uint8 cache and augment whole batches "
                              "(much faster on CPU; resnets.fastdata)", bool)  # fmt: skip
    precision: str = _option("auto", "auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32", str, choices=PRECISIONS)
    seed: int | None = _option(42, "random seed", int, metavar="N")
    num_workers: int | None = _option(None, "DataLoader worker processes (the chapter's pipeline)", int,
                                      flag="--workers", metavar="N")  # fmt: skip
    deterministic: bool = _option(False, "deterministic GPU kernels too (slower; CPU runs repeat with the same "
                                  "seed anyway)", bool)  # fmt: skip
    book_accuracy: tuple[float, ...] = ()
    book_valid_loss: tuple[float, ...] = ()
    book_epoch_time: float | None = None  # seconds per epoch on the authors' 2020 GPU

    def __post_init__(self):
        for k in ("presize", "size"):
            check_number(k, getattr(self, k), low=16)
        for k in ("bs", "epochs"):
            check_number(k, getattr(self, k))
        check_number("lr", self.lr, kind=(int, float), low=0, strict=True)
        check_regularisation(self.label_smoothing, self.mixup)
        if self.size > self.presize:
            raise InputError(f"size ({self.size}) is larger than presize ({self.presize}): use a presize of at "
                             f"least {self.size} (--presize), or leave presize out to keep the experiment's ratio")
        if self.subset is not None:
            _check_subset(self.subset)
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes is not None and not isinstance(self.classes, tuple):
            check_number("classes", self.classes)
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.seed is not None:
            check_number("seed", self.seed, low=0)
        if self.num_workers is not None:
            check_number("num_workers", self.num_workers, low=0)
        for k in ("flip", "zero_gamma", "fast_data", "deterministic"):
            if not isinstance(getattr(self, k), bool):
                raise InputError(f"{k} must be True or False, got {getattr(self, k)!r}")

    @property
    def book(self) -> dict:
        return {"accuracy": list(self.book_accuracy), "valid_loss": list(self.book_valid_loss),
                "epoch_time": self.book_epoch_time}  # fmt: skip

    @property
    def settings(self) -> dict:
        "The options, as results.json records them."
        return {"name": self.name, "model": self.model, **{k: getattr(self, k) for k in OPTIONS if k != "model"}}


OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(Experiment) if f.metadata.get("option"))


# The book's numbers, from its 14_resnet notebook (see SPEC.md).
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("cnn", "fully convolutional CNN (5 stride-2 ConvLayers)", "cnn",
               book_accuracy=(0.3254, 0.5078, 0.5717, 0.6392, 0.6591),
               book_valid_loss=(2.1551, 1.5868, 1.2955, 1.1393, 1.0926), book_epoch_time=7),
    Experiment("res_cnn", "ResBlock CNN (one stride-2 ResBlock per step)", "res_cnn",
               book_accuracy=(0.3732, 0.4392, 0.5073, 0.6448, 0.6678),
               book_valid_loss=(1.8455, 1.7787, 1.5965, 1.1030, 1.0380), book_epoch_time=8.5),
    Experiment("double_res_cnn", "double ResBlock CNN (stride-2 then stride-1 ResBlock)", "double_res_cnn",
               book_accuracy=(0.3552, 0.5027, 0.5885, 0.6632, 0.6927),
               book_valid_loss=(1.8646, 1.5968, 1.3045, 1.0651, 0.9636), book_epoch_time=12),
    Experiment("resnet18", "ResNet-18 with the bag-of-tricks stem", "resnet18",
               book_accuracy=(0.4138, 0.5182, 0.6507, 0.6843, 0.7572),
               book_valid_loss=(1.8284, 1.5727, 1.0861, 0.9682, 0.7826), book_epoch_time=13),
    # Bottlenecks only pay off on bigger images and longer training: the chapter moves to 224 px, 20 epochs.
    Experiment("resnet50", "bottleneck ResNet-50 at 224 px, 20 epochs", "resnet50",
               data="imagenette-320", presize=320, size=224, epochs=20,
               book_accuracy=(0.5141, 0.3975, 0.3870, 0.3962, 0.6138, 0.4227, 0.5287, 0.6665, 0.6504, 0.6749,
                              0.6764, 0.7139, 0.7417, 0.8069, 0.8586, 0.8464, 0.8619, 0.8535, 0.8759, 0.8726),
               book_valid_loss=(), book_epoch_time=32),
    # Not in the chapter: ResNet-34 (basic blocks, [3,4,6,3]) matches ResNet-50's FLOPs, for the bottleneck claim.
    Experiment("resnet34", "ResNet-34 (basic blocks, ResNet-50's layout and compute)", "resnet34"),
    # Exercise 1: fully convolutional MNIST nets on fastai's MNIST_TINY (3s and 7s), with and without the pool.
    # Digits are not mirror-symmetric, so no flips; the net is tiny and the data set 709 images, so bs 64.
    Experiment("mnist_pool", "MNIST: 3 stride-2 convs + adaptive average pool", "mnist_pool",
               data="mnist-tiny", presize=28, size=28, bs=64, epochs=5, flip=False),
    Experiment("mnist_flat", "MNIST: 5 stride-2 convs to 1x1, flattened, no pool", "mnist_flat",
               data="mnist-tiny", presize=28, size=28, bs=64, epochs=5, flip=False),
    # Claim 5, degradation: He et al.'s CIFAR-sized nets (6n+2 layers, 16-32-64 wide) on Imagenette
    # at 32 px, on 200 images per class so that each trains in minutes on a CPU.
    *[Experiment(f"{kind}{depth}", f"{depth}-layer {'residual' if kind == 'res' else 'plain'} net at 32 px",
                 f"{kind}{depth}", presize=40, size=32, subset=200, epochs=5, lr=3e-3)
      for kind in ("plain", "res") for depth in (20, 56)],
]}  # fmt: skip
CHAPTER = ("cnn", "res_cnn", "double_res_cnn", "resnet18", "resnet50")  # the five with the book's numbers


def list_experiments() -> list[str]:
    return list(EXPERIMENTS)


def get_experiment(name: str | Experiment) -> Experiment:
    "The registered experiment called `name` (an `Experiment` passes through)."
    if isinstance(name, Experiment):
        return name
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


class RunHistory(Callback):
    "Copies each finished epoch's losses, metrics and seconds into a `Results`, and saves it there and then."

    order = Recorder.order + 1  # after the Recorder has written the epoch's values

    def __init__(self, results: Results, folder: Path | None, start_epoch: int = 0):
        self.results, self.folder, self.start_epoch = results, folder, start_epoch

    def before_epoch(self):
        self.start = time.perf_counter()

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # skipped when resuming: already in the history
            return
        names = self.recorder.metric_names[1:-1]  # drop 'epoch' and 'time'
        row = {"epoch": self.epoch, **{n: float(v) for n, v in zip(names, self.learn.final_record)}}
        row["time"] = time.perf_counter() - self.start
        self.results.history.append(row)
        if self.folder is not None:
            self.results.save(self.folder, plot=False)


def configure(name: str | Experiment, verbose: bool = True, **overrides) -> Experiment:
    """The experiment `name` with `overrides` (any of `OPTIONS`; None keeps the experiment's value), checked.

    A larger `size` without a `presize` keeps the experiment's presize/size ratio (160/128 in the chapter),
    and says so."""
    exp = get_experiment(name)
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise InputError(f"unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}: "
                         f"the settings are {', '.join(OPTIONS)}")  # fmt: skip
    given = {k: v for k, v in overrides.items() if v is not None}
    size = given.get("size")
    if "presize" not in given and isinstance(size, int) and not isinstance(size, bool) and size > exp.presize:
        given["presize"] = round(size * exp.presize / exp.size)
        if verbose:
            print(f"resnets: presize {given['presize']} for size {size} (the experiment's ratio "
                  f"{exp.presize}/{exp.size}; --presize chooses another)")  # fmt: skip
    return replace(exp, **given)


def build(name: str | Experiment, cbs=None, verbose: bool = True, **overrides):
    """The experiment's Learner on its data, ready for `lr_find` or `fit_one_cycle`, and the configured experiment.

    `overrides` are `configure`'s (data=..., size=..., fast_data=True, ...)."""
    exp = configure(name, verbose=verbose, **overrides)
    if exp.seed is not None:  # each rank its own augmentation draws, reproducibly (seed + rank, as timm does); DDP
        # copies rank 0's initial weights to every rank. CPU runs repeat exactly; on a GPU kernels may still vary.
        set_seed(exp.seed + rank_distrib())
    dls = get_data(exp.data, exp.presize, exp.size, exp.bs, classes=exp.classes, subset=exp.subset,
                   num_workers=exp.num_workers, flip=exp.flip, fast=exp.fast_data)  # fmt: skip
    if len(dls.train_ds) < exp.bs:  # fastai drops the last partial training batch: nothing would train
        raise InputError(f"the training set has {len(dls.train_ds)} images, fewer than one batch of {exp.bs}: "
                         f"use a batch size of at most {len(dls.train_ds)} (--bs) or more images")  # fmt: skip
    model = create_model(exp.model, n_out=dls.c, zero_gamma=exp.zero_gamma)
    _check_input_size(model, exp)
    if exp.fast_data:  # channels-last convolutions: ~20 % faster epochs on CPU (PERFORMANCE.md), same accuracy;
        # the model's layout is enough (a contiguous batch comes out of the first conv channels-last). Done here, not
        # with fastai's ChannelsLast callback, so that `bench profile`'s own step loop times the same model.
        model = model.to(memory_format=torch.channels_last)
    learn = get_learner(dls, model, precision=exp.precision, cbs=cbs, metrics=[accuracy_metric(), top_5_metric()],
                        label_smoothing=exp.label_smoothing, mixup=exp.mixup, verbose=verbose)  # fmt: skip
    return learn, exp


def _check_input_size(model, exp: Experiment) -> None:
    "A model that is not fully convolutional accepts one size only: say so before training, not deep in torch."
    fixed = getattr(model, "input_size", None)
    if fixed is not None and exp.size != fixed:
        raise InputError(f"model {exp.model!r} cannot take {exp.size} px images (it is not fully convolutional): "
                         f"use its experiment's size, {fixed} px")  # fmt: skip


def _check_free(out: str | os.PathLike) -> None:
    if (Path(out) / "results.json").exists():
        raise RunExists(f"{out} already holds a run's results.json: choose another output folder or remove it")


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
    """Train an experiment with `fit_one_cycle`; `overrides` (any of `OPTIONS`) change the chapter's settings.

    Every epoch is saved into `out` (results.json, and checkpoint.pth for `resume`). `resume=True` continues the
    run in `out` from its last checkpoint with the same settings (a fresh start if it has none)."""
    start = time.perf_counter()
    exp = configure(name, verbose=rank_distrib() == 0, **overrides)
    if resume and (out is None or not save):
        raise InputError("resume needs the run's folder: pass out=FOLDER (--out) of the run to continue")
    state = load_checkpoint(out) if resume else None
    if not resume and save and out is not None:
        _check_free(out)  # before any work (resuming a run killed before its first checkpoint starts it again)
    world, rank = num_distrib(), rank_distrib()
    if world > 1 and (resume or exp.fast_data):
        raise InputError("distributed runs (torchrun / accelerate launch) support neither --resume nor --fast-data yet")
    set_deterministic(exp.deterministic)
    learn, exp = build(exp, verbose=rank == 0)
    dls = learn.dls
    settings = {**exp.settings, "data": str(dls.path), "precision": learn.precision, "n_train": len(dls.train_ds),
                "n_valid": len(dls.valid_ds), "n_classes": dls.c, "argv": sys.argv}  # fmt: skip
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
    run_cbs = [RunHistory(results, folder, checkpoint.start_epoch), checkpoint, StopOnNaN(folder)]
    learn.add_cbs(run_cbs)
    try:
        with contextlib.nullcontext() if progress else learn.no_bar(), _distributed(learn, world):
            learn.fit_one_cycle(exp.epochs, exp.lr, start_epoch=checkpoint.start_epoch)
    except torch.cuda.OutOfMemoryError as e:
        more = f" and --resume to continue {folder}" if folder is not None else ""
        msg = f"out of GPU memory at batch size {exp.bs} ({e}): try --bs {max(1, exp.bs // 2)}{more}"
        raise MemoryError(msg) from None
    finally:  # results.learn goes on as a plain Learner: more training in a notebook writes nothing into the run
        learn.remove_cbs(run_cbs)
    if rank > 0:  # one line per other rank, so a launcher's log shows every rank trained
        print(f"resnets: rank {rank} of {world} trained {learn.train_iter} batches; rank 0 reports", file=sys.stderr)
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
    diff = {k: (saved.get(k), now.get(k)) for k in (set(saved) | set(now)) - ignore if saved.get(k) != now.get(k)}
    if diff:
        shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise InputError(f"cannot resume {out} with different settings ({shown}): use the run's own options")


def lr_find(name: str | Experiment, out: str | os.PathLike | None = None, **overrides):
    "Run fastai's `lr_find` for an experiment; saves the plot as lr_find.png in `out` when given."
    learn, _ = build(name, **overrides)
    suggestion = learn.lr_find(show_plot=out is not None)
    if out is not None:
        import matplotlib.pyplot as plt

        Path(out).mkdir(parents=True, exist_ok=True)
        save_figure(plt.gcf(), Path(out) / "lr_find.png")
        plt.close("all")
    return suggestion
