"""The chapter's five experiments as data, and `run()`, the one code path behind Python, CLI and notebooks.

Each `Experiment` is a frozen record: model name, data settings, epochs, lr, batch size, and the
book's per-epoch reference (validation accuracy and loss, seconds per epoch on the authors' 2020 GPU).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import fastai
import torch
import torchvision
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.metrics import accuracy
from fastai.torch_core import num_distrib, rank_distrib, set_seed

from . import __version__
from .checkpoint import Checkpoint, StopOnNaN, load_checkpoint, set_deterministic
from .data import _check_subset, get_data
from .errors import InputError, RunExists
from .learner import check_regularisation, get_learner, top_5_accuracy
from .models import create_model
from .results import Results

__all__ = ["Experiment", "EXPERIMENTS", "CHAPTER", "get_experiment", "list_experiments", "build", "run", "lr_find"]


@dataclass(frozen=True)
class Experiment:
    "One of the chapter's experiments: what to train, on what, for how long, and what the book got."

    name: str
    title: str
    model: str  # a key of resnets.models.MODELS
    source: str = "imagenette-160"
    presize: int = 160
    resize: int = 128
    bs: int = 128
    subset: int | tuple[int, int] | None = None  # at most this many images per class in each split (None: all)
    epochs: int = 5
    lr: float = 3e-3  # the chapter's lr_find suggestion, used for every experiment
    flip: bool = True  # random horizontal flips in the augmentation
    label_smoothing: float = 0.0
    mixup: float = 0.0  # alpha of MixUp's Beta distribution; 0: off
    fast_data: bool = False  # decode once into a uint8 cache, augment in batches (resnets.fastdata)
    zero_gamma: bool = True  # residual branches end in a BatchNorm with gamma 0 (False: the ablation)
    book_accuracy: tuple[float, ...] = ()
    book_valid_loss: tuple[float, ...] = ()
    book_epoch_time: float | None = None  # seconds per epoch on the authors' 2020 GPU

    @property
    def book(self) -> dict:
        return {"accuracy": list(self.book_accuracy), "valid_loss": list(self.book_valid_loss),
                "epoch_time": self.book_epoch_time}  # fmt: skip


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
               source="imagenette-320", presize=320, resize=224, epochs=20,
               book_accuracy=(0.5141, 0.3975, 0.3870, 0.3962, 0.6138, 0.4227, 0.5287, 0.6665, 0.6504, 0.6749,
                              0.6764, 0.7139, 0.7417, 0.8069, 0.8586, 0.8464, 0.8619, 0.8535, 0.8759, 0.8726),
               book_valid_loss=(), book_epoch_time=32),
    # Not in the chapter: ResNet-34 (basic blocks, [3,4,6,3]) matches ResNet-50's FLOPs, for the bottleneck claim.
    Experiment("resnet34", "ResNet-34 (basic blocks, ResNet-50's layout and compute)", "resnet34"),
    # Exercise 1: fully convolutional MNIST nets on fastai's MNIST_TINY (3s and 7s), with and without the pool.
    # Digits are not mirror-symmetric, so no flips; the net is tiny and the data set 709 images, so bs 64.
    Experiment("mnist_pool", "MNIST: 3 stride-2 convs + adaptive average pool", "mnist_pool",
               source="mnist-tiny", presize=28, resize=28, bs=64, epochs=5, flip=False),
    Experiment("mnist_flat", "MNIST: 5 stride-2 convs to 1x1, flattened, no pool", "mnist_flat",
               source="mnist-tiny", presize=28, resize=28, bs=64, epochs=5, flip=False),
    # Claim 5, degradation: He et al.'s CIFAR-sized nets (6n+2 layers, 16-32-64 wide) on Imagenette
    # at 32 px, on 200 images per class so that each trains in minutes on a CPU.
    *[Experiment(f"{kind}{depth}", f"{depth}-layer {'residual' if kind == 'res' else 'plain'} net at 32 px",
                 f"{kind}{depth}", presize=40, resize=32, subset=200, epochs=5, lr=3e-3)
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


def _check(name: str, value, kind=int, low=1, strict=False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind) or (value <= low if strict else value < low):
        op = ">" if strict else ">="
        raise InputError(f"{name} must be {'an integer' if kind is int else 'a number'} {op} {low}, got {value!r}")


def _versions() -> dict:
    return {"resnets": __version__, "fastai": fastai.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}  # fmt: skip


def describe_device(device: torch.device) -> str:
    "A short human description of the device a run trained on."
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


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


def _resolve_settings(
    exp: Experiment, size, presize, bs, epochs, lr, label_smoothing=None, mixup=None, zero_gamma=None, subset=None,
    fast_data=None,
) -> Experiment:
    for n, v in {"size": size, "presize": presize}.items():
        _check(n, v, low=32)
    _check("bs", bs)
    _check("epochs", epochs)
    _check("lr", lr, kind=(int, float), low=0, strict=True)
    check_regularisation(*(0.0 if v is None else v for v in (label_smoothing, mixup)))  # before any data is read
    if subset is not None:
        _check_subset(subset)
    resize = size or exp.resize
    # Keep the chapter's presize/size ratio (160/128) when a larger size is asked for.
    presize = presize or (exp.presize if resize <= exp.presize else round(resize * 1.25))
    return replace(exp, resize=resize, presize=presize, bs=bs or exp.bs, epochs=epochs or exp.epochs, lr=lr or exp.lr,
                   label_smoothing=exp.label_smoothing if label_smoothing is None else label_smoothing,
                   mixup=exp.mixup if mixup is None else mixup,
                   zero_gamma=exp.zero_gamma if zero_gamma is None else bool(zero_gamma),
                   subset=exp.subset if subset is None else subset,
                   fast_data=exp.fast_data if fast_data is None else bool(fast_data))  # fmt: skip


def build(
    name: str | Experiment,
    data=None,
    size: int | None = None,
    presize: int | None = None,
    bs: int | None = None,
    subset: int | tuple[int, int] | None = None,
    classes: list[str] | int | None = None,
    precision: str = "auto",
    seed: int | None = 42,
    num_workers: int | None = None,
    cbs=None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    zero_gamma: bool | None = None,
    fast_data: bool | None = None,
    verbose: bool = True,
):
    "The experiment's Learner on its data (`data` overrides the source), ready for `lr_find` or `fit_one_cycle`."
    exp = _resolve_settings(get_experiment(name), size, presize, bs, None, None, label_smoothing, mixup, zero_gamma,
                            subset, fast_data)
    if seed is not None:
        set_seed(seed)  # CPU runs repeat exactly; on a GPU cuDNN's choice of kernels may still vary
    dls = get_data(data if data is not None else exp.source, exp.presize, exp.resize, exp.bs,
                   classes=classes, subset=exp.subset, num_workers=num_workers, flip=exp.flip,
                   fast=exp.fast_data)  # fmt: skip
    if len(dls.train_ds) < exp.bs:  # fastai drops the last partial training batch: nothing would train
        raise InputError(f"the training set has {len(dls.train_ds)} images, fewer than one batch of {exp.bs}: "
                         f"use a batch size of at most {len(dls.train_ds)} (--bs) or more images")  # fmt: skip
    model = create_model(exp.model, n_out=dls.c, zero_gamma=exp.zero_gamma)
    _check_input_size(model, exp)
    if exp.fast_data:  # channels-last convolutions: ~20 % faster epochs on CPU (PERFORMANCE.md), same accuracy;
        # the model's layout is enough (a contiguous batch comes out of the first conv channels-last). Done here, not
        # with fastai's ChannelsLast callback, so that `bench profile`'s own step loop times the same model.
        model = model.to(memory_format=torch.channels_last)
    learn = get_learner(dls, model, precision=precision, cbs=cbs, metrics=[accuracy, top_5_accuracy],
                        label_smoothing=exp.label_smoothing, mixup=exp.mixup, verbose=verbose)  # fmt: skip
    return learn, exp


def _check_input_size(model, exp: Experiment) -> None:
    "A model that is not fully convolutional accepts one size only: say so before training, not deep in torch."
    fixed = getattr(model, "input_size", None)
    if fixed is not None and exp.resize != fixed:
        raise InputError(f"model {exp.model!r} cannot take {exp.resize} px images (it is not fully convolutional): "
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
    data=None,
    epochs: int | None = None,
    size: int | None = None,
    presize: int | None = None,
    bs: int | None = None,
    lr: float | None = None,
    seed: int | None = 42,
    subset: int | tuple[int, int] | None = None,
    classes: list[str] | int | None = None,
    out: str | os.PathLike | None = None,
    precision: str = "auto",
    num_workers: int | None = None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    zero_gamma: bool | None = None,
    fast_data: bool | None = None,
    progress: bool = True,
    save: bool = True,
    resume: bool = False,
    deterministic: bool = False,
) -> Results:
    """Train one of the chapter's experiments with `fit_one_cycle`; any argument overrides the chapter's setting.

    Every epoch is saved (results.json, and checkpoint.pth for `resume`). `resume=True` continues the run in
    `out` from its last checkpoint with the same settings (a fresh start if it has none). `deterministic`
    makes GPU kernels repeatable too (CPU runs repeat with the same seed either way)."""
    start = time.perf_counter()
    exp = _resolve_settings(get_experiment(name), size, presize, bs, epochs, lr, label_smoothing, mixup, zero_gamma,
                            subset, fast_data)
    if resume and (out is None or not save):
        raise InputError("resume needs the run's folder: pass out=FOLDER (--out) of the run to continue")
    state = load_checkpoint(out) if resume else None
    if not resume and save and out is not None:
        _check_free(out)  # before any work (resuming a run killed before its first checkpoint starts it again)
    world, rank = num_distrib(), rank_distrib()
    if world > 1 and (resume or exp.fast_data):
        raise InputError("distributed runs (torchrun / accelerate launch) support neither --resume nor --fast-data yet")
    set_deterministic(deterministic)
    learn, exp = build(exp, data, classes=classes, precision=precision, seed=seed, num_workers=num_workers,
                       verbose=rank == 0)  # fmt: skip
    dls = learn.dls
    settings = {k: v for k, v in asdict(exp).items() if not k.startswith(("book_", "title"))}
    settings.update(data=str(dls.path), classes=classes, precision=learn.precision, seed=seed,
                    deterministic=deterministic, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), n_classes=dls.c,
                    argv=sys.argv)  # fmt: skip
    if world > 1:
        settings.update(world_size=world)
    results = Results(exp.name, settings, seed, versions=_versions(), device=describe_device(dls.device), book=exp.book)
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
    learn.add_cbs([RunHistory(results, folder, checkpoint.start_epoch), checkpoint, StopOnNaN(folder)])
    try:
        with contextlib.nullcontext() if progress else learn.no_bar(), _distributed(learn, world):
            learn.fit_one_cycle(exp.epochs, exp.lr, start_epoch=checkpoint.start_epoch)
    except torch.cuda.OutOfMemoryError as e:
        more = f" and --resume to continue {folder}" if folder is not None else ""
        msg = f"out of GPU memory at batch size {exp.bs} ({e}): try --bs {max(1, exp.bs // 2)}{more}"
        raise MemoryError(msg) from None
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


def lr_find(name: str | Experiment, out: str | os.PathLike | None = None, **kw):
    "Run fastai's `lr_find` for an experiment; saves the plot as lr_find.png in `out` when given."
    learn, _ = build(name, **kw)
    suggestion = learn.lr_find(show_plot=out is not None)
    if out is not None:
        import matplotlib.pyplot as plt

        Path(out).mkdir(parents=True, exist_ok=True)
        plt.gcf().savefig(Path(out) / "lr_find.png", dpi=100, bbox_inches="tight")
        plt.close("all")
    return suggestion
