"""The record of a run's settings, importable without torch: `Experiment`, its option groups and their checks.

`Experiment` is a frozen record of every setting a run needs, in six groups (`GROUPS`): the model, the data, the
schedule, regularisation, evaluation and the runtime. Each group checks its own fields once, when the record is
made, and each error names the setting and the fix. `to_dict` / `from_dict` are the one way settings go to JSON
(results.json, checkpoints) and back, older files' missing settings taking their defaults. The command line's
options are made from the same fields (resnets.cli). The registered experiments are in resnets.recipes.
Nothing here imports torch or fastai, so `resnets --help` and a bad option answer at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import InputError, MissingFile, check_number

__all__ = ["parse_seconds", "PRECISIONS", "AUGMENTS", "AUGMENT_KW", "OPTIMIZERS", "SCHEDULES", "MODEL_NAMES",
           "DATA_SETS", "CHAPTER_BS", "GROUPS", "LOGGERS", "RESNETS", "check_choice",
           "Experiment", "OPTIONS", "OPTION_GROUPS", "DEFAULTS", "with_overrides",
           "check_source", "CHECKPOINT_FILES", "check_run_folder", "csv_columns", "is_weights_path",
           "check_regularisation", "check_subset", "check_fraction"]

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
LOGGERS = ("csv", "tensorboard", "wandb")  # fastai's CSVLogger, TensorBoardCallback, WandbCallback
# The ResNets: what `width` and `stem` scale, and what ImageNet weights exist for (resnets.pretrained)
RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Batch augmentation: fastai's aug_transforms(min_scale=0.5) as the chapter has it, or its random crop and flip
# only. The keywords are aug_transforms' and ChapterAugment's (the fast path's) alike.
AUGMENT_KW: dict[str, dict] = {"chapter": {},
                               "light": dict(max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)}
AUGMENTS = tuple(AUGMENT_KW)
# Optimisers by fastai's names (learner.OPT_FUNCS has the functions) and fastai's fit schedules.
OPTIMIZERS = ("adam", "ranger")
SCHEDULES = ("one_cycle", "flat_cos")
# The networks of resnets.models.MODELS (which checks that it builds exactly these), for checks without torch.
MODEL_NAMES = ("cnn", "res_cnn", "double_res_cnn", *RESNETS, "mnist_pool", "mnist_flat", "plain20", "plain56", "res20",
               "res56")
# The data sets known by name, and the folder each extracts to (resnets.sources.SOURCES has fastai's URLs).
DATA_SETS = {"imagenette-160": "imagenette2-160", "imagenette-320": "imagenette2-320", "imagenette": "imagenette2",
             "imagewoof-160": "imagewoof2-160", "imagewoof-320": "imagewoof2-320", "imagewoof": "imagewoof2",
             "mnist-tiny": "mnist_tiny"}
CHAPTER_BS = 128  # the chapter's batch size: the default, halved for a small data set (resnets.data.choose_bs)
GROUPS = ("model", "data", "schedule", "regularisation", "evaluation", "runtime")


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_fraction(name: str, value, low_open: bool = True, example: str = "0.2") -> None:
    "An InputError unless `value` is a number in (0, 1) (`low_open`) or [0, 1)."
    if not _number(value) or not (0 < value < 1 if low_open else 0 <= value < 1):
        span = "between 0 and 1" if low_open else "in [0, 1)"
        raise InputError(f"{name} must be a fraction {span} (e.g. {example}), got {value!r}")


def check_regularisation(label_smoothing: float = 0.0, mixup: float = 0.0) -> None:
    "Raise an InputError naming the problem if label smoothing or MixUp's alpha is out of range."
    if not _number(label_smoothing) or not 0 <= label_smoothing < 1:
        raise InputError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    if not _number(mixup) or mixup < 0:
        raise InputError(f"mixup must be a number >= 0 (the alpha of MixUp's Beta distribution; 0: off), got {mixup!r}")


def check_subset(subset) -> tuple[int, int]:
    "The (N_train, N_valid) images per class of a `subset` setting, or an InputError."
    pair = (subset, subset) if isinstance(subset, int) else tuple(subset) if isinstance(subset, list | tuple) else ()
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise InputError(f"subset must be N or (N_train, N_valid) images per class, each >= 1; got {subset!r}")
    return pair


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")


def _parse_classes(s: str) -> int | list[str]:
    return int(s) if s.isdigit() else [c for c in s.split(",") if c]


def _parse_sizes(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x)
    except ValueError:
        raise InputError(f"sizes must be comma-separated whole numbers of pixels, e.g. 64,96,128; got {s!r}") from None


def parse_seconds(s: str | float | int) -> float:
    "A duration: seconds as a number, or a string like 90, 90s, 10m, 1.5h."
    if _number(s):
        return float(s)
    text = str(s).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        return float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise InputError(f"a duration must be seconds or a number with s, m or h (90, 90s, 10m, 1.5h), got {s!r}") \
            from None


def check_source(source) -> None:
    """An InputError unless `source` (the `data` setting) can be data: a known name (or a name then a path inside
    it), a URL, or a folder or file that exists. Checked before torch loads; resnets.data checks its layout."""
    text = str(source)
    if isinstance(source, str) and (text.split("/", 1)[0] in DATA_SETS or text.startswith(("http://", "https://"))):
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"no folder or file at {path} and {text!r} is not a known data set: pass an existing folder "
                         f"(train/ and val/, or a folder per class), a CSV, a URL, or one of {', '.join(DATA_SETS)}")


CHECKPOINT_FILES = ("checkpoint.safetensors", "checkpoint.pth")  # a run folder's (resnets.checkpoint), newest first


def check_run_folder(run_dir) -> None:
    "A MissingFile unless `run_dir` is a run folder with a checkpoint (a trained model), checked before torch loads."
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MissingFile(f"no run folder at {path}: pass the --out folder of a `resnets run`")
    if not any((path / f).is_file() for f in CHECKPOINT_FILES):
        raise MissingFile(f"{path} has no {CHECKPOINT_FILES[0]}, so no trained model: train it with `resnets run "
                          "--out`")


def csv_columns(path) -> list[str]:
    "The column names of a CSV file, from its first line (torch-free, pandas-free: the command line's early checks)."
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def is_weights_path(spec: str) -> bool:
    "Whether a `pretrained` value names a file or folder (a weights file's suffix, or a path), not a timm tag."
    return "/" in spec or os.sep in spec or Path(spec).suffix in (".safetensors", ".pth", ".pt", ".bin")


def _option(group: str, default, help: str, type=None, renamed_from: tuple[str, ...] = (), **cli):
    """A setting of an experiment: its group, its default, and how the command line and the docs describe it. Its
    flag is its name (`--num-workers`); `renamed_from`: earlier flags, still taken with a line giving the new one."""
    assert group in GROUPS, group
    return field(default=default, metadata={"option": True, "group": group, "help": help, "type": type,
                                            "renamed_from": renamed_from, "cli": cli})


@dataclass(frozen=True)
class Experiment:
    """One experiment: every setting a run needs, checked when the record is made, group by group. `replace`
    (dataclasses') or `resnets.configure` make variants; the command line's options are made from the fields."""

    name: str
    title: str = ""
    # -- model: the network and where its weights start
    model: str = _option("model", "resnet18", "the network (a name of resnets.models.MODELS)", str, metavar="MODEL")
    width: float = _option("model", 1.0, "a ResNet's widths times this, e.g. 0.5 for half the channels (about a "
                           "quarter of the compute)", float, metavar="X")
    stem: tuple[int, ...] = _option("model", (), "a ResNet's stem: the widths of its 3x3 convs before `width` scales "
                                    "them (default 32,32,64, the chapter's; 32,64 drops the middle conv; 64 is one "
                                    "stride-2 conv)", _parse_sizes, metavar="W,W,...")
    zero_gamma: bool = _option("model", True, "start each residual branch's last BatchNorm at 0 (--no-zero-gamma: "
                               "at 1)", bool)
    init: str | None = _option("model", None, "start from an earlier run's weights (its --out folder, or a file from "
                               "`resnets export`): its body, a new head for these classes, then fastai's fine_tune "
                               "(the head alone for freeze_epochs, then every layer, the body at lower learning "
                               "rates)", str, metavar="RUN_DIR")
    pretrained: bool | str = _option("model", False, "start from ImageNet weights (timm's ResNet-D, the chapter's "
                                     "network): a timm tag such as resnet50d.ra2_in1k, a .safetensors file or a timm "
                                     "hub folder, or no value for the model's default tag; its preprocessing, a new "
                                     "head for these classes, then fastai's fine_tune as with init", str,
                                     metavar="TAG|FILE", nargs="?", const=True)
    # -- data: which images, how they are sized, augmented and loaded
    data: str | os.PathLike = _option("data", "imagenette-160", "a folder with train/ and val/, a folder of class "
                                      "folders, a CSV, a name (imagenette-160, ...) or a URL", str,
                                      metavar="PATH")
    presize: int = _option("data", 160, "size images are first resized (and cropped) to, before augmentation", int,
                           metavar="PX")
    size: int = _option("data", 128, "training image size in pixels (the chapter's `resize`)", int, metavar="PX")
    bs: int | None = _option("data", None, "batch size (default: the chapter's 128, halved for a small data set "
                             "until an epoch has at least 8 batches, down to 16)", int, metavar="N")
    subset: int | tuple[int, int] | None = _option("data", None, "at most N images per class in each split (a fixed "
                                                   "sample)", int, metavar="N")
    classes: int | tuple[str, ...] | None = _option("data", None, "the first N classes, or a comma-separated list of "
                                                    "class folders", _parse_classes, metavar="N|a,b")
    valid_pct: float = _option("data", 0.2, "for a folder of class folders, or a CSV without is_valid: the fraction "
                               "of each class held out for validation (a seeded split)", float,
                               metavar="FRAC")
    label_col: str | None = _option("data", None, "for a CSV: the column of labels (default: the second)", str,
                                    metavar="COL")
    holdout: float = _option("data", 0.0, "score on this fraction of the training images, held out with a fixed "
                             "seed, instead of the validation set (to choose settings)", float,
                             metavar="FRAC")
    flip: bool = _option("data", True, "random horizontal flips in the augmentation (--no-flip for digits)", bool)
    augment: str = _option("data", "chapter", "batch augmentation: chapter (fastai's aug_transforms(min_scale=0.5): "
                           "a random square crop, flip, rotation, zoom, warp and lighting) or light (the crop and the "
                           "flip only)", str, choices=AUGMENTS)
    fast_data: bool = _option("data", False, "decode the images once into a uint8 cache and augment whole batches "
                              "(much faster on CPU; resnets.fastdata)", bool)
    # -- schedule: how long and how fast
    epochs: int = _option("schedule", 5, "number of epochs", int, metavar="N")
    lr: float = _option("schedule", 3e-3, "maximum learning rate of the schedule (one-cycle's peak, flat_cos's flat "
                        "part; with init or pretrained, the head's)", float, metavar="LR")
    opt: str = _option("schedule", "adam", "optimiser: adam (fastai's Adam, the chapter's) or ranger (fastai's "
                       "ranger: RAdam with Lookahead)", str, choices=OPTIMIZERS)
    schedule: str = _option("schedule", "one_cycle", "learning-rate schedule: one_cycle (fastai's fit_one_cycle, the "
                            "chapter's) or flat_cos (fit_flat_cos: `lr` for three quarters of the steps, then cosine "
                            "annealing)", str, choices=SCHEDULES)
    sizes: tuple[int, ...] = _option("schedule", (), "progressive resizing: training sizes over the epochs, each for "
                                     "an equal share of them, e.g. 64,96,128 (default: `size` throughout)",
                                     _parse_sizes, metavar="PX,PX,...")
    budget: float | None = _option("schedule", None, "seconds (or 10m, 1h) for the whole run: the epochs are fitted "
                                   "to this machine's measured speed", parse_seconds, metavar="TIME")
    freeze_epochs: int = _option("schedule", 1, "with init or pretrained: epochs that train the new head alone, "
                                 "before `epochs` of the whole network", int, metavar="N")
    lr_mult: float = _option("schedule", 100.0, "with init or pretrained: the body's learning rate is the head's "
                             "divided by this (fastai's fine_tune lr_mult; 1: the same rate for every layer)", float,
                             metavar="X")
    # -- regularisation
    label_smoothing: float = _option("regularisation", 0.0, "label smoothing eps, e.g. 0.1 (0: off)", float,
                                     metavar="EPS")
    mixup: float = _option("regularisation", 0.0, "MixUp with this Beta alpha, e.g. 0.4 (0: off)", float,
                           metavar="ALPHA")
    ema: float = _option("regularisation", 0.0, "score and keep an exponential moving average of the weights with "
                         "this decay per step, e.g. 0.99 (0: off)", float, metavar="DECAY")
    # -- evaluation: how the model is scored
    test_size: int | None = _option("evaluation", None, "size of the last validation and of the final model's "
                                    "predictions (default: the last training size; earlier epochs validate at their "
                                    "training size)", int, metavar="PX")
    recalibrate_bn: bool = _option("evaluation", False, "before the last validation, re-estimate BatchNorm's "
                                   "statistics on 1,024 training images preprocessed as validation is (statistics "
                                   "gathered under training's augmentation, or at another size, then match the "
                                   "images scored)", bool)
    valid_last: int | None = _option("evaluation", None, "validate the last N epochs only (default: every epoch); the "
                                     "earlier epochs' validation metrics are left empty, and their time saved", int,
                                     metavar="N")
    tta: bool = _option("evaluation", False, "score the final model on each validation image and its mirror image, "
                        "averaged (test-time augmentation)", bool)
    # -- runtime: the machine's side
    precision: str = _option("runtime", "auto", "auto (fp16 on CUDA; on a CPU bf16 where it has native bfloat16, "
                             "else fp32), fp16, bf16 or fp32", str,
                             choices=PRECISIONS)
    seed: int | None = _option("runtime", 42, "random seed", int, metavar="N")
    num_workers: int | None = _option("runtime", None, "DataLoader worker processes (default: fastai's; the fast "
                                      "path: none on a CPU, up to 8 for a GPU)", int, renamed_from=("--workers",),
                                      metavar="N")
    deterministic: bool = _option("runtime", False, "deterministic GPU kernels too (slower; on CPU a seed repeats "
                                  "a run on the same machine anyway)", bool)
    compile: bool = _option("runtime", False, "torch.compile the model inside fastai's loop (inductor: BatchNorm, "
                            "ReLU and the residual adds fused into the convolutions' neighbours): minutes of "
                            "compiling for each image size and for training and validation, then faster steps; for "
                            "long runs at big images (docs/performance.md)", bool)
    log: str | None = _option("runtime", None, "also log every epoch as fastai does: csv (CSVLogger, history.csv in "
                              "the run folder), tensorboard (TensorBoardCallback, RUN_DIR/tensorboard; pip install "
                              "tensorboard) or wandb (WandbCallback, offline unless WANDB_MODE says otherwise; pip "
                              "install wandb)", str, choices=LOGGERS)
    # -- the book's figures for this experiment (resnets.recipes)
    book_accuracy: tuple[float, ...] = ()
    book_valid_loss: tuple[float, ...] = ()
    book_epoch_time: float | None = None  # seconds per epoch on the authors' 2020 GPU

    def __post_init__(self):
        for key in ("stem", "sizes", "book_accuracy", "book_valid_loss"):  # JSON's lists as the record's tuples
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in ("subset", "classes"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.init is not None:
            object.__setattr__(self, "init", str(self.init))
        if self.pretrained is None:  # (as an older results file's from_dict may give it)
            object.__setattr__(self, "pretrained", False)
        elif not isinstance(self.pretrained, bool):  # a tag or a path
            object.__setattr__(self, "pretrained", str(self.pretrained))
        if self.budget is not None:
            object.__setattr__(self, "budget", parse_seconds(self.budget))
        for group in GROUPS:
            getattr(self, f"_check_{group}")()

    def _check_model(self):
        check_choice("model", self.model, MODEL_NAMES)
        check_number("width", self.width, kind=(int, float), low=0, strict=True)
        for w in self.stem:
            check_number("each stem width", w)
        _check_bool("zero_gamma", self.zero_gamma)
        if self.pretrained is not False:
            if self.init is not None:
                raise InputError("init and pretrained both choose the starting weights: give one of them")
            if self.model not in RESNETS:
                raise InputError(f"ImageNet weights (pretrained) exist for {', '.join(RESNETS)}, not "
                                 f"{self.model!r}: pass --model resnet18 (or another of them)")
            if self.width != 1:
                raise InputError(f"ImageNet weights are for the full width: leave --width out (got {self.width})")

    def _check_data(self):
        for k in ("presize", "size"):
            check_number(k, getattr(self, k), low=16)
        if self.bs is not None:
            check_number("bs", self.bs)
        if self.size > self.presize:
            raise InputError(f"size ({self.size}) is larger than presize ({self.presize}): use a presize of at "
                             f"least {self.size} (--presize), or leave presize out to keep the experiment's ratio")
        if self.subset is not None:
            check_subset(self.subset)
        if self.classes is not None and not isinstance(self.classes, tuple):
            check_number("classes", self.classes)
        check_fraction("valid_pct", self.valid_pct)
        check_fraction("holdout", self.holdout, low_open=False, example="0.1")
        check_choice("augment", self.augment, AUGMENTS)
        for k in ("flip", "fast_data"):
            _check_bool(k, getattr(self, k))

    def _check_schedule(self):
        check_number("epochs", self.epochs)
        check_number("lr", self.lr, kind=(int, float), low=0, strict=True)
        check_choice("opt", self.opt, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.sizes and self.sizes[-1] != self.size:
            raise InputError(f"sizes must end at the training size: {self.sizes} ends at {self.sizes[-1]}, size is "
                             f"{self.size} (leave size out and it follows sizes)")
        for v in self.sizes:
            self._check_image_size("sizes", v)
        if self.budget is not None:
            check_number("budget", self.budget, kind=(int, float), low=0, strict=True)
        check_number("freeze_epochs", self.freeze_epochs, low=0)
        check_number("lr_mult", self.lr_mult, kind=(int, float), low=1)
        how = "init" if self.init is not None else "pretrained"
        if self.fine_tunes and self.schedule != "one_cycle":
            raise InputError(f"{how} (fine-tuning) trains with fastai's fine_tune, whose schedule is one-cycle: leave "
                             "--schedule out")

    @property
    def fine_tunes(self) -> bool:
        "Whether the run starts from trained weights (`init` or `pretrained`) and trains with fastai's fine_tune."
        return self.init is not None or self.pretrained is not False

    @property
    def total_epochs(self) -> int:
        "The epochs a run of it trains in all: fine-tuning's frozen epochs first, then `epochs`."
        return self.epochs + (self.freeze_epochs if self.fine_tunes else 0)

    def _check_regularisation(self):
        check_regularisation(self.label_smoothing, self.mixup)
        if not _number(self.ema) or not (self.ema == 0 or 0 < self.ema < 1):
            raise InputError(f"ema must be a decay between 0 and 1 (e.g. 0.99), or 0 for none; got {self.ema!r}")

    def _check_evaluation(self):
        if self.test_size is not None:
            self._check_image_size("test_size", self.test_size)
        if self.valid_last is not None:
            check_number("valid_last", self.valid_last)
        for k in ("recalibrate_bn", "tta"):
            _check_bool(k, getattr(self, k))

    def _check_runtime(self):
        check_choice("precision", self.precision, PRECISIONS)
        if self.seed is not None:
            check_number("seed", self.seed, low=0)
        if self.num_workers is not None:
            check_number("num_workers", self.num_workers, low=0)
        _check_bool("deterministic", self.deterministic)
        _check_bool("compile", self.compile)
        if self.log is not None:
            check_choice("log", self.log, LOGGERS)

    def _check_image_size(self, name: str, v) -> None:
        check_number(name, v, low=16)
        if v > self.presize:
            raise InputError(f"{name} ({v}) is larger than presize ({self.presize}): use --presize {v} or more")

    @property
    def book(self) -> dict:
        return {"accuracy": list(self.book_accuracy), "valid_loss": list(self.book_valid_loss),
                "epoch_time": self.book_epoch_time}

    def train_size(self, epoch: int, epochs: int | None = None) -> int:
        "The training image size in `epoch` (0-based) of `epochs` (default: this record's): `sizes` stretched."
        n = epochs or self.epochs
        return self.sizes[min(len(self.sizes) - 1, epoch * len(self.sizes) // n)] if self.sizes else self.size

    @property
    def valid_size(self) -> int:
        "The size the validation images are scored at."
        return self.test_size or (self.sizes[-1] if self.sizes else self.size)

    def to_dict(self) -> dict:
        "The name and options, as results.json and checkpoints record them (JSON's types: tuples as lists)."
        def plain(v):
            return list(v) if isinstance(v, tuple) else str(v) if isinstance(v, os.PathLike) else v

        return {"name": self.name, **{k: plain(getattr(self, k)) for k in OPTIONS}}

    @property
    def settings(self) -> dict:
        "`to_dict()` (kept for code written against resnets 0.2)."
        return self.to_dict()

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> Experiment:
        """The record of a results.json's or checkpoint's settings (and `overrides`): what is not an option there
        (n_train, argv ...) is left out, and options an older file does not have take their defaults."""
        given = {k: v for k, v in {**d, **overrides}.items() if k in OPTIONS}
        if "size" not in given and "resize" in d:  # results written before version 0.2
            given["size"] = d["resize"]
        return cls(d.get("name", "run"), **given)


OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(Experiment) if f.metadata.get("option"))
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(f.name for f in fields(Experiment) if f.metadata.get("group") == g) for g in GROUPS}
DEFAULTS: dict = {f.name: f.default for f in fields(Experiment) if f.metadata.get("option")}


def with_overrides(exp: Experiment, verbose: bool = True, **overrides) -> Experiment:
    """`exp` with `overrides` (any of `OPTIONS`; None keeps the experiment's value), checked. Two settings follow
    from others, and say so: `sizes` given without `size` ends at its last size; a `size` given without `sizes`
    is the size throughout (the experiment's progressive sizes are dropped); a `size` larger than the experiment's
    presize, without a `presize`, keeps the experiment's presize/size ratio (160/128 in the chapter)."""
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise InputError(f"unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}: "
                         f"the settings are {', '.join(OPTIONS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("sizes") and "size" not in given and isinstance(given["sizes"], tuple | list):
        given["size"] = given["sizes"][-1]  # progressive resizing ends at the training size
    size = given.get("size")
    if size is not None and "sizes" not in given and exp.sizes:
        given["sizes"] = ()  # a size given alone is the size throughout
        if verbose:
            print(f"resnets: size {size} throughout, in place of the experiment's progressive sizes "
                  f"{','.join(map(str, exp.sizes))} (--sizes sets a schedule)")
    if "presize" not in given and _number(size) and size > exp.presize:
        given["presize"] = round(size * exp.presize / exp.size)
        if verbose:
            print(f"resnets: presize {given['presize']} for size {size} (the experiment's ratio "
                  f"{exp.presize}/{exp.size}; --presize chooses another)")
    return replace(exp, **given)
