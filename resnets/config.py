"""Every setting of the library, declared once and importable without torch: the experiments and studies.

`Experiment` is a frozen record of every setting a run needs (model, data, sizes, schedule,
regularisation, precision, seed ...) and the book's per-epoch reference (validation accuracy and loss,
seconds per epoch on the authors' 2020 GPU). `configure(name, **overrides)` applies overrides with one
`replace`, and the record checks itself; the command line's options are made from the same fields
(`OPTIONS`). A `Study` is a set of arms, each a registered experiment with a few settings changed.
Nothing here imports torch or fastai, so `resnets --help` and a bad option answer at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from .errors import InputError, check_number

__all__ = ["parse_seconds", "PRECISIONS", "AUGMENTS", "AUGMENT_KW", "OPTIMIZERS", "SCHEDULES", "Experiment", "OPTIONS",
           "EXPERIMENTS", "CHAPTER",
           "get_experiment",
           "list_experiments", "configure", "check_regularisation", "check_subset", "Arm", "Study", "STUDIES",
           "get_study", "list_studies"]  # fmt: skip

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
# Batch augmentation: fastai's aug_transforms(min_scale=0.5) as the chapter has it, or its random crop and flip
# only. The keywords are aug_transforms' and ChapterAugment's (the fast path's) alike.
AUGMENT_KW: dict[str, dict] = {"chapter": {},
                               "light": dict(max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)}
AUGMENTS = tuple(AUGMENT_KW)
# Optimisers by fastai's names (learner.OPT_FUNCS has the functions) and fastai's fit schedules.
OPTIMIZERS = ("adam", "ranger")
SCHEDULES = ("one_cycle", "flat_cos")


def check_regularisation(label_smoothing: float = 0.0, mixup: float = 0.0) -> None:
    "Raise a ValueError naming the problem if label smoothing or MixUp's alpha is out of range."
    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if not number(label_smoothing) or not 0 <= label_smoothing < 1:
        raise InputError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    if not number(mixup) or mixup < 0:
        raise InputError(f"mixup must be a number >= 0 (the alpha of MixUp's Beta distribution; 0: off), got {mixup!r}")


def check_subset(subset) -> tuple[int, int]:
    pair = (subset, subset) if isinstance(subset, int) else tuple(subset) if isinstance(subset, list | tuple) else ()
    if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise InputError(f"subset must be N or (N_train, N_valid) images per class, each >= 1; got {subset!r}")
    return pair


def _parse_classes(s: str) -> int | list[str]:
    return int(s) if s.isdigit() else [c for c in s.split(",") if c]


def _parse_sizes(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


def parse_seconds(s: str | float | int) -> float:
    "A duration: seconds as a number, or a string like 90, 90s, 10m, 1.5h."
    if isinstance(s, int | float) and not isinstance(s, bool):
        return float(s)
    text = str(s).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        return float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise InputError(f"a duration must be seconds or a number with s, m or h (90, 90s, 10m, 1.5h), got {s!r}") \
            from None


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
    width: float = _option(1.0, "a ResNet's widths times this, e.g. 0.5 for half the channels (about a quarter of "
                           "the compute)", float, metavar="X")  # fmt: skip
    stem: tuple[int, ...] = _option((), "a ResNet's stem: the widths of its 3x3 convs before `width` scales them "
                                    "(default 32,32,64, the chapter's; 32,64 drops the middle conv; 64 is one "
                                    "stride-2 conv)", _parse_sizes, metavar="W,W,...")  # fmt: skip
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
    valid_pct: float = _option(0.2, "for a folder of class folders, or a CSV without is_valid: the fraction of each "
                               "class held out for validation (a seeded split)", float, metavar="FRAC")  # fmt: skip
    label_col: str | None = _option(None, "for a CSV: the column of labels (default: the second)", str, metavar="COL")
    epochs: int = _option(5, "number of epochs", int, metavar="N")
    lr: float = _option(3e-3, "maximum learning rate of the one-cycle schedule", float, metavar="LR")
    flip: bool = _option(True, "random horizontal flips in the augmentation (--no-flip for digits)", bool)
    augment: str = _option("chapter", "batch augmentation: chapter (fastai's aug_transforms(min_scale=0.5): a random "
                           "square crop, flip, rotation, zoom, warp and lighting) or light (the crop and the flip "
                           "only)", str, choices=AUGMENTS)  # fmt: skip
    opt: str = _option("adam", "optimiser: adam (fastai's Adam, the chapter's) or ranger (fastai's ranger: RAdam "
                       "with Lookahead)", str, choices=OPTIMIZERS)  # fmt: skip
    schedule: str = _option("one_cycle", "learning-rate schedule: one_cycle (fastai's fit_one_cycle, the chapter's) "
                            "or flat_cos (fit_flat_cos: `lr` for three quarters of the steps, then cosine "
                            "annealing)", str, choices=SCHEDULES)  # fmt: skip
    label_smoothing: float = _option(0.0, "label smoothing eps, e.g. 0.1 (0: off)", float, metavar="EPS")
    mixup: float = _option(0.0, "MixUp with this Beta alpha, e.g. 0.4 (0: off)", float, metavar="ALPHA")
    ema: float = _option(0.0, "score and keep an exponential moving average of the weights with this decay per "
                         "step, e.g. 0.99 (0: off)", float, metavar="DECAY")  # fmt: skip
    zero_gamma: bool = _option(True, "start each residual branch's last BatchNorm at 0 (--no-zero-gamma: at 1)", bool)
    sizes: tuple[int, ...] = _option((), "progressive resizing: training sizes over the epochs, each for an equal "
                                     "share of them, e.g. 64,96,128 (default: `size` throughout)", _parse_sizes,
                                     metavar="PX,PX,...")  # fmt: skip
    test_size: int | None = _option(None, "size of the last validation and of the final model's predictions "
                                    "(default: the last training size; earlier epochs validate at their training "
                                    "size); larger tests at a higher resolution than training", int,
                                    metavar="PX")  # fmt: skip
    recalibrate_bn: bool = _option(False, "before the last validation, re-estimate BatchNorm's statistics on 1,024 "
                                   "training images preprocessed as validation is (statistics gathered under "
                                   "training's augmentation, or at another size, then match the images scored)",
                                   bool)  # fmt: skip
    valid_last: int | None = _option(None, "validate the last N epochs only (default: every epoch); the earlier "
                                     "epochs' validation metrics are left empty, and their time saved", int,
                                     metavar="N")  # fmt: skip
    tta: bool = _option(False, "score the final model on each validation image and its mirror image, averaged "
                        "(test-time augmentation)", bool)  # fmt: skip
    holdout: float = _option(0.0, "score on this fraction of the training images, held out with a fixed seed, "
                             "instead of the validation set (to choose settings)", float, metavar="FRAC")  # fmt: skip
    init: str | None = _option(None, "start from an earlier run's weights (its --out folder, or a file from `resnets "
                               "export`): its body, a new head for these classes, then fastai's fine_tune (the head "
                               "alone for freeze_epochs, then every layer, the body at lower learning rates)", str,
                               metavar="RUN_DIR")  # fmt: skip
    freeze_epochs: int = _option(1, "with init: epochs that train the new head alone, before `epochs` of the whole "
                                 "network", int, metavar="N")  # fmt: skip
    lr_mult: float = _option(100.0, "with init: the body's learning rate is the head's divided by this (fastai's "
                             "fine_tune lr_mult; 1: the same rate for every layer)", float, metavar="X")  # fmt: skip
    budget: float | None = _option(None, "seconds (or 10m, 1h) for the whole run: the epochs are fitted to this "
                                   "machine's measured speed", parse_seconds, metavar="TIME")  # fmt: skip
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
        check_number("freeze_epochs", self.freeze_epochs, low=0)
        check_number("lr_mult", self.lr_mult, kind=(int, float), low=1)
        if self.init is not None:
            object.__setattr__(self, "init", str(self.init))
            if self.budget is not None:
                raise InputError("init (fine-tuning) does not take a budget yet: give --epochs instead of --budget")
        check_number("lr", self.lr, kind=(int, float), low=0, strict=True)
        check_number("width", self.width, kind=(int, float), low=0, strict=True)
        check_regularisation(self.label_smoothing, self.mixup)
        if not (self.ema == 0 or 0 < self.ema < 1) or isinstance(self.ema, bool):
            raise InputError(f"ema must be a decay between 0 and 1 (e.g. 0.99), or 0 for none; got {self.ema!r}")
        if self.size > self.presize:
            raise InputError(f"size ({self.size}) is larger than presize ({self.presize}): use a presize of at "
                             f"least {self.size} (--presize), or leave presize out to keep the experiment's ratio")
        if self.subset is not None:
            check_subset(self.subset)
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.sizes and self.sizes[-1] != self.size:
            raise InputError(f"sizes must end at the training size: {self.sizes} ends at {self.sizes[-1]}, size is "
                             f"{self.size} (leave size out and it follows sizes)")  # fmt: skip
        for k, v in [*(("sizes", v) for v in self.sizes), ("test_size", self.test_size)]:
            if v is not None:
                check_number(k, v, low=16)
                if v > self.presize:
                    raise InputError(f"{k} ({v}) is larger than presize ({self.presize}): use --presize {v} or more")
        if not (isinstance(self.holdout, int | float) and not isinstance(self.holdout, bool) and
                0 <= self.holdout < 1):  # fmt: skip
            raise InputError(f"holdout must be a fraction in [0, 1), e.g. 0.1, got {self.holdout!r}")
        if isinstance(self.valid_pct, bool) or not isinstance(self.valid_pct, int | float) or \
                not 0 < self.valid_pct < 1:  # fmt: skip
            raise InputError(f"valid_pct must be a fraction between 0 and 1 (e.g. 0.2), got {self.valid_pct!r}")
        if self.budget is not None:
            object.__setattr__(self, "budget", parse_seconds(self.budget))
            check_number("budget", self.budget, kind=(int, float), low=0, strict=True)
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes is not None and not isinstance(self.classes, tuple):
            check_number("classes", self.classes)
        for k, allowed in (("opt", OPTIMIZERS), ("schedule", SCHEDULES), ("augment", AUGMENTS),
                           ("precision", PRECISIONS)):  # fmt: skip
            if getattr(self, k) not in allowed:
                raise InputError(f"unknown {k} {getattr(self, k)!r}: choose one of {', '.join(allowed)}")
        if self.init is not None and self.schedule != "one_cycle":
            raise InputError("init (fine-tuning) trains with fastai's fine_tune, whose schedule is one-cycle: leave "
                             "--schedule out")  # fmt: skip
        object.__setattr__(self, "stem", tuple(self.stem))
        for w in self.stem:
            check_number("each stem width", w)
        if self.seed is not None:
            check_number("seed", self.seed, low=0)
        if self.num_workers is not None:
            check_number("num_workers", self.num_workers, low=0)
        if self.valid_last is not None:
            check_number("valid_last", self.valid_last)
        for k in ("flip", "zero_gamma", "fast_data", "deterministic", "tta"):
            if not isinstance(getattr(self, k), bool):
                raise InputError(f"{k} must be True or False, got {getattr(self, k)!r}")

    @property
    def book(self) -> dict:
        return {"accuracy": list(self.book_accuracy), "valid_loss": list(self.book_valid_loss),
                "epoch_time": self.book_epoch_time}  # fmt: skip

    def train_size(self, epoch: int, epochs: int | None = None) -> int:
        "The training image size in `epoch` (0-based) of `epochs` (default: this record's): `sizes` stretched."
        n = epochs or self.epochs
        return self.sizes[min(len(self.sizes) - 1, epoch * len(self.sizes) // n)] if self.sizes else self.size

    @property
    def valid_size(self) -> int:
        "The size the validation images are scored at."
        return self.test_size or (self.sizes[-1] if self.sizes else self.size)

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
    # Speedruns (issue 15): the book's ResNet-18 accuracy (75.7 %) on a 2-core CPU in minutes. Every setting was chosen
    # on a held-out tenth of the training images (--holdout 0.1), never on val/: RESULTS.md has the trials. A ResNet
    # from the library's blocks at half width (a quarter of the compute), small images growing to 64 (96) px,
    # a higher learning rate with label smoothing, the fast data path, flip TTA.
    Experiment("speedrun", "ResNet-10 at half width, 40 to 64 px, 9 epochs, flip TTA",
               "resnet10", width=0.5, presize=128, size=64, sizes=(40, 48, 56, 64), epochs=9, lr=6e-3,
               label_smoothing=0.1, fast_data=True, tta=True),
    # v3: a two-conv stem (trial T1: no worse on the held-out tenth, ~10 % faster epochs at 96 px), and only the
    # last half of the epochs validated (the earlier ones cannot reach 75.7 %; each pass costs 5-8 s here).
    # v4: batches of 64 (trial B64: +1.6 points held out; as fast model only, slower epochs at 64 px), scored at the
    # last training size after re-estimating BatchNorm there (a 112 px test lost 0.6-2.8 points with TTA on each of
    # round 4's four networks).
    Experiment("speedrun10", "ResNet-18 at half width, two-conv stem, 64 to 96 px, 10 epochs, batches of 64, "
               "BatchNorm re-estimated, flip TTA", "resnet18", width=0.5, stem=(32, 64), presize=128, size=96,
               sizes=(64, 80, 96), bs=64, epochs=10, lr=6e-3, label_smoothing=0.1, fast_data=True, tta=True,
               recalibrate_bn=True, valid_last=5),
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
    if given.get("sizes") and "size" not in given and isinstance(given["sizes"], tuple | list):
        given["size"] = given["sizes"][-1]  # progressive resizing ends at the training size
    size = given.get("size")
    if size is not None and "sizes" not in given and exp.sizes and size != exp.sizes[-1]:
        given["sizes"] = ()  # a size given alone is the size throughout
        if verbose:
            print(f"resnets: size {size} throughout, in place of the experiment's progressive sizes "
                  f"{','.join(map(str, exp.sizes))} (--sizes sets a schedule)")  # fmt: skip
    if exp.test_size and "test_size" not in given and "sizes" in given and tuple(given["sizes"] or ()) != exp.sizes:
        given["test_size"] = None  # the experiment's test size was chosen for its own schedule
        if verbose:
            print(f"resnets: tested at the last training size, not the experiment's test size {exp.test_size} "
                  "(chosen for its own sizes; --test-size sets one)")  # fmt: skip
    if "presize" not in given and isinstance(size, int) and not isinstance(size, bool) and size > exp.presize:
        given["presize"] = round(size * exp.presize / exp.size)
        if verbose:
            print(f"resnets: presize {given['presize']} for size {size} (the experiment's ratio "
                  f"{exp.presize}/{exp.size}; --presize chooses another)")  # fmt: skip
    if "model" in given:  # the registered experiments' models are tested; a chosen one is checked here
        from .models import MODELS

        if given["model"] not in MODELS:
            raise InputError(f"unknown model {given['model']!r}: choose one of {', '.join(MODELS)}")
    return replace(exp, **given)


@dataclass(frozen=True)
class Arm:
    "One side of a comparison: a registered experiment and the `run()` options that differ from it."

    label: str
    experiment: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    name: str
    claim: str  # what the study is meant to show, in one sentence
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...] = (42,)
    curve: str = "train_loss"  # the per-epoch value the claim is about (plotted beside accuracy)
    throughput: bool = False  # also time a training step of each arm's model on synthetic images


_SMALL_RESNET = dict(size=64, presize=80)  # ResNets at 64 px: 4x cheaper than the chapter's 128 px
STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("degradation",
          "a deeper plain net reaches a higher training loss than a shallower one; with shortcuts it does not "
          "(He et al. 2015, figure 1)",
          (Arm("plain-20", "plain20"), Arm("plain-56", "plain56"), Arm("res-20", "res20"), Arm("res-56", "res56"))),
    Study("zero_gamma",
          "residual branches whose last BatchNorm starts at gamma 0 train better at high learning rates than "
          "with gamma 1",
          tuple(Arm(f"gamma {0 if zg else 1}, lr {lr:g}", "resnet18",
                    dict(**_SMALL_RESNET, subset=(100, 50), lr=lr, zero_gamma=zg))
                for lr in (3e-3, 3e-2, 1e-1) for zg in (True, False)),
          seeds=(1, 2)),
    Study("bottleneck",
          "at matched compute, bottleneck blocks (ResNet-50) against basic blocks (ResNet-34): parameters, "
          "counted FLOPs, throughput and accuracy",
          (Arm("basic (resnet34)", "resnet34", dict(**_SMALL_RESNET, subset=200)),
           Arm("bottleneck (resnet50)", "resnet50",
               dict(**_SMALL_RESNET, subset=200, epochs=5, data="imagenette-160"))),
          curve="valid_loss", throughput=True),
    Study("regularisation",
          "label smoothing and MixUp together against plain cross-entropy for ResNet-18 over 10 epochs",
          (Arm("baseline", "resnet18", dict(**_SMALL_RESNET, epochs=10)),
           Arm("label smoothing 0.1 + mixup 0.4", "resnet18",
               dict(**_SMALL_RESNET, epochs=10, label_smoothing=0.1, mixup=0.4))),
          curve="valid_loss"),
    Study("noisy",
          "training on noisy labels (noisy_imagenette.csv: 0 %, 5 % and 50 % of the training labels changed) costs "
          "accuracy on the clean validation labels, much more at 50 % than at 5 %",
          tuple(Arm(f"{p} % noisy labels", "speedrun",
                    dict(data="imagenette-160/noisy_imagenette.csv", label_col=f"noisy_labels_{p}"))
                for p in (0, 5, 50)),
          curve="valid_loss"),
]}  # fmt: skip


def list_studies() -> list[str]:
    return list(STUDIES)


def get_study(name: str | Study) -> Study:
    if isinstance(name, Study):
        return name
    if name not in STUDIES:
        raise InputError(f"unknown study {name!r}: choose one of {', '.join(STUDIES)}")
    return STUDIES[name]


