"""The chapter's data: Imagenette (or any `train/<class>/*`, `val/<class>/*` folder) as fastai DataLoaders.

  source   a fastai URL (`URLs.IMAGENETTE_160`), a short name (`imagenette-160`) or a local folder
  presize  item transform: every image is first resized and cropped to a presize x presize square
           (a random crop on the training set, the centre on the validation set)
  resize   batch transform: random-resized crop (at least half the image) to resize x resize, + flips etc.
  bs       batch size
  flip     random horizontal flips (right for photos, not for digits)

URLs go through fastai's `untar_data`, so an already-extracted copy in fastai's data folder
(`~/.fastai/data`, or `$FASTAI_HOME/data`) is used without network.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import warnings
from functools import partial
from pathlib import Path

from fastai.data.all import (
    CategoryBlock,
    DataBlock,
    DataLoaders,
    FuncSplitter,
    Normalize,
    parallel,
    parent_label,
)
from fastai.vision.all import ImageBlock, Resize, aug_transforms, imagenet_stats
from fastai.vision.augment import RandomResizedCropGPU
from PIL import Image

from .config import AUGMENT_KW, AUGMENTS, CHAPTER_BS, check_choice, check_fraction, check_subset
from .decode import RESAMPLES
from .errors import InputError, check_number
from .fastdata import fast_dataloaders, set_image_size
from .images import PIXEL_LIMIT_ENV, RGBImage, check_image, image_files
from .labels import IMAGENETTE_NAMES, class_label, table_label
from .sources import DataError, resolve_source

__all__ = ["IMAGENETTE_NAMES", "class_label", "table_label", "find_items", "find_split", "choose_bs", "get_data",
           "set_image_size"]

def _pick_valid_name(path: Path, valid_name: str | None) -> str:
    if valid_name is not None:
        names = [valid_name]
    else:
        names = ["val", "valid"]  # Imagenette uses val/, fastai's MNIST samples valid/
    for name in names:
        if (path / name).is_dir():
            return name
    raise DataError(
        f"no `{names[0]}/` folder under {path}: expected train/ and {names[0]}/ sub-folders, "
        "each with one sub-folder of images per class"
    )


# Verification results (images.check_image's: None for a good file), keyed by (file, size, mtime, pixel limit) so a
# changed file, or a changed limit, is checked again.
_VERIFIED: dict[tuple, str | None] = {}


def _bad_images(files: list[Path]) -> dict[Path, str]:
    "The files that cannot be trained on, with why ('unreadable', 'too large')."
    keys = []
    limit = os.environ.get(PIXEL_LIMIT_ENV, "")
    for f in files:
        st = f.stat()
        keys.append((str(f), st.st_size, st.st_mtime_ns, limit))
    todo = [k for k in keys if k not in _VERIFIED]
    if todo:
        bar = len(todo) > 2000 and sys.stdout.isatty()  # a bar in a log file is noise
        _VERIFIED.update(zip(todo, parallel(check_image, [k[0] for k in todo], chunksize=256, progress=bar)))
    return {f: _VERIFIED[k] for f, k in zip(files, keys) if _VERIFIED[k] is not None}


def find_items(
    path: str | os.PathLike,
    valid_name: str | None = None,
    classes: list[str] | int | None = None,
    subset: int | tuple[int, int] | None = None,
    check_images: bool = True,
    bad_images: str = "skip",
) -> tuple[list[Path], str]:
    "Validated image files of `path/train` and `path/<valid_name>`, optionally limited; returns (files, valid_name)."
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"no folder at {path}")
    if not (path / "train").is_dir():
        raise DataError(f"no `train/` folder under {path}: expected train/ and val/ sub-folders, one folder per class")
    valid_name = _pick_valid_name(path, valid_name)
    split = {}
    for name in ("train", valid_name):
        files = image_files(path / name)
        _say_empty_classes(path / name, files)
        if not files:
            raise DataError(f"no image files under {path / name}: expected {name}/<class>/<image>.jpg (or .png, ...)")
        split[name] = files
    unseen = _unseen(split["train"], split[valid_name], parent_label)
    if unseen:
        raise DataError(
            f"classes in {valid_name}/ with no training images: {', '.join(unseen[:5])}"
            f"{' ...' if len(unseen) > 5 else ''}. Add images under train/<class>/ or remove them from {valid_name}/."
        )
    # one class list for both sides (no unseen class: the validation side's classes are among the training side's)
    kept = set(_keep_classes(split["train"] + split[valid_name], parent_label, classes, path))
    train, valid = ([f for f in split[k] if f in kept] for k in ("train", valid_name))
    train, valid = _subset(train, valid, subset, parent_label)
    items = train + valid
    return (_readable(items, bad_images) if check_images else items), valid_name


def _say_empty_classes(folder: Path, files: list[Path]) -> None:
    "A line naming the class folders under `folder` that hold no images (they are not classes of the data)."
    used = {f.relative_to(folder).parts[0] for f in files}
    empty = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in used)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        print(f"resnets: {len(empty)} folder(s) in {folder} hold no images and are left out (not classes): {shown}")


def _readable(files: list[Path], bad_images: str = "skip") -> list[Path]:
    "The files that open as images; the others are skipped with a message naming the first few, or an error."
    bad = _bad_images(files)
    if not bad:
        return files
    large = [f for f, why in bad.items() if why == "too large"]
    unreadable = [f for f, why in bad.items() if why != "too large"]
    msgs = []
    if unreadable:
        shown = "\n  ".join(str(f) for f in unreadable[:5])
        msgs.append(f"{len(unreadable)} of {len(files)} image files cannot be read (corrupt, truncated or not images)"
                    f":\n  {shown}")
    if large:
        shown = "\n  ".join(str(f) for f in large[:5])
        msgs.append(f"{len(large)} of {len(files)} images are larger than PIL's decompression-bomb limit of "
                    f"{Image.MAX_IMAGE_PIXELS} pixels (PIL refuses twice that), so they are not decoded; if you "
                    f"trust them, allow them with {PIXEL_LIMIT_ENV}=0 (no limit) or a larger number of pixels:"
                    f"\n  {shown}")
    msg = "\n".join(msgs)
    if bad_images == "raise":
        raise DataError(msg + "\nRemove or replace them, or pass bad_images='skip' to train without them.")
    print(f"resnets: skipping {msg}")
    return [f for f in files if f not in bad]


def _random_split(files: list[Path], label: dict, valid_pct: float, seed: int) -> tuple[list[Path], list[Path]]:
    "A seeded split, `valid_pct` of each class to validation (at least one image each way): the same every run."
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(label[f], []).append(f)
    single = sorted(c for c, fs in by_class.items() if len(fs) < 2)
    if single:
        raise DataError(f"class{'es' * (len(single) > 1)} with a single image: {', '.join(single[:5])}: a split "
                        "needs at least two images of each class (one to train on, one to check); add images or "
                        "remove the class")
    rng, valid = random.Random(seed), set()
    for c in sorted(by_class):
        fs = by_class[c]
        valid.update(rng.sample(fs, min(len(fs) - 1, max(1, round(valid_pct * len(fs))))))
    return [f for f in files if f not in valid], [f for f in files if f in valid]


def _read_csv(csv: Path, label_col: str | None) -> tuple[list[Path], dict, dict | None]:
    """fastai's `from_csv` form: a column of image paths (relative to the CSV's folder; the first column, or one
    called path/name/fname/file), a label column (`label_col`, default the second), an optional `is_valid`."""
    import pandas as pd

    try:
        df = pd.read_csv(csv)
    except Exception as e:
        raise DataError(f"{csv} cannot be read as a CSV ({type(e).__name__}: {e})") from e
    cols = list(df.columns)
    if len(cols) < 2:
        raise DataError(f"{csv} has {len(cols)} column(s): it needs image paths and labels (and may have is_valid)")
    path_col = next((c for c in ("path", "name", "fname", "file", "filename") if c in cols), cols[0])
    label_col = label_col or next(c for c in cols if c not in (path_col, "is_valid"))
    if label_col not in cols:
        raise DataError(f"no column {label_col!r} in {csv}: its columns are {', '.join(map(str, cols))} "
                        "(choose one with --label-col)")
    files = [(csv.parent / str(p)).resolve() for p in df[path_col]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(str(f) for f in missing[:3])
        raise DataError(f"{len(missing)} of {len(files)} files named in {csv} are missing (paths are read relative "
                        f"to {csv.parent}): {shown}{' ...' if len(missing) > 3 else ''}")
    labels = dict(zip(files, (str(v) for v in df[label_col])))
    is_valid = None
    if "is_valid" in cols:
        is_valid = {f: str(v).strip().lower() in ("true", "1", "yes") for f, v in zip(files, df["is_valid"])}
    return files, labels, is_valid


def find_split(
    path: str | os.PathLike,
    valid_name: str | None = None,
    classes: list[str] | int | None = None,
    subset: int | tuple[int, int] | None = None,
    check_images: bool = True,
    bad_images: str = "skip",
    valid_pct: float = 0.2,
    label_col: str | None = None,
    seed: int = 42,
) -> tuple[list[Path], list[Path], dict | None]:
    """(training files, validation files, labels) from any of the layouts `get_data` takes; labels is None where
    a file's class is its folder's name (`class_label`), else a table for `table_label`."""
    check_fraction("valid_pct", valid_pct)
    path = Path(path)
    if path.is_dir() and (path / "train").is_dir():  # train/ and val/ (or valid/)
        items, valid_name = find_items(path, valid_name, classes, subset, check_images, bad_images)
        train = [f for f in items if f.parent.parent.name == "train"]
        return train, [f for f in items if f.parent.parent.name == valid_name], None
    if path.is_file():  # a CSV of paths and labels
        files, table, is_valid = _read_csv(path, label_col)
    else:  # a folder of class folders, no split
        if not path.is_dir():
            raise DataError(f"no folder at {path}")
        files = [f for f in image_files(path) if f.parent.parent == path]
        _say_empty_classes(path, files)
        if not files:
            raise DataError(f"no images under {path}: expected train/<class>/ and val/<class>/ folders, or one "
                            "folder of images per class, or a CSV of image paths and labels")
        table, is_valid = {f: parent_label(f) for f in files}, None
    if check_images:
        files = _readable(files, bad_images)
    files = _keep_classes(files, table.__getitem__, classes, path)
    if is_valid is None:
        train, valid = _random_split(files, table, valid_pct, seed)
    else:
        train, valid = [f for f in files if not is_valid[f]], [f for f in files if is_valid[f]]
        unseen = _unseen(train, valid, table.__getitem__)
        if unseen:
            raise DataError(f"classes with validation images but none to train on: {', '.join(unseen[:5])}: "
                            "every class needs training images (is_valid False)")
    train, valid = _subset(train, valid, subset, table.__getitem__)
    return train, valid, table


# The steps every layout's files go through, each file's class given by `label` (its folder's name, or a table's).


def _unseen(train: list[Path], valid: list[Path], label) -> list[str]:
    "The classes of validation images that no training image has (sorted): an error, worded per layout."
    return sorted({label(f) for f in valid} - {label(f) for f in train})


def _keep_classes(files: list[Path], label, classes: list[str] | int | None, path) -> list[Path]:
    """The files of the classes asked for: the first `classes` in sorted order (an int), or those named; a number out
    of range or an unknown name is an error that lists what `path` has."""
    if classes is None:
        return files
    names = sorted({label(f) for f in files})
    if isinstance(classes, int) and not 1 <= classes <= len(names):
        raise DataError(f"classes must be between 1 and {len(names)} (classes in {path}), got {classes}")
    keep = names[:classes] if isinstance(classes, int) else list(classes)
    unknown = sorted(set(keep) - set(names))
    if unknown:
        raise DataError(f"unknown classes {unknown}: {path} has {', '.join(names)}")
    return [f for f in files if label(f) in keep]


def _subset(train: list[Path], valid: list[Path], subset, label) -> tuple[list[Path], list[Path]]:
    "At most `subset` (n, or (n_train, n_valid)) images of each class on each side: `_per_class`."
    if subset is None:
        return train, valid
    n_train, n_valid = check_subset(subset)
    return _per_class(train, n_train, label), _per_class(valid, n_valid, label)


def _per_class(files: list[Path], n: int, label=parent_label) -> list[Path]:
    "At most `n` files of each class, the same ones every time (a fixed-seed sample of the sorted list)."
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(label(f), []).append(f)
    rng = random.Random(0)
    return sorted(f for fs in by_class.values() for f in (fs if len(fs) <= n else rng.sample(fs, n)))


BS, MIN_BATCHES, MIN_BS = CHAPTER_BS, 8, 16  # what a small data set's epoch should have at least, and its batches


def choose_bs(n_train: int, bs: int | None = None) -> tuple[int, str | None]:
    """The batch size for `n_train` training images, and a line saying why when it is not `bs`.

    None: the chapter's 128, halved until an epoch has at least 8 batches (fastai drops the last partial batch, so
    192 photos in batches of 128 would train one step an epoch), down to 16. A given `bs` is kept unless the
    training set holds less than one batch of it; below 8 batches, the line says which batch size (16 or more) gives 8.
    Either way an epoch has at least two batches (a power of two, as batch sizes go), for sets of 4 images or more."""
    asked, chosen = bs, bs or BS
    if bs is None:
        while chosen > MIN_BS and n_train // chosen < MIN_BATCHES:
            chosen //= 2
    if n_train < 4:
        raise DataError(f"the training set has {n_train} image(s): a run needs at least 4 (two batches of 2)")
    if n_train < chosen or (bs is None and n_train // chosen < 2):  # less than one batch: nothing would train
        chosen = 2 ** int(math.log2(n_train // 2))
    if chosen == asked:
        steps, better = n_train // chosen, 2 ** int(math.log2(max(n_train // MIN_BATCHES, 1)))
        if steps >= MIN_BATCHES or better < MIN_BS:  # enough steps, or a set too small for a batch size to help
            return chosen, None
        return chosen, (f"{n_train} training images in batches of {chosen}: {steps} step(s) an epoch (fastai drops "
                        f"the last {n_train % chosen} image(s) of each); --bs {better} gives "
                        f"{n_train // better}")
    if chosen == BS and asked is None:
        return chosen, None
    why = "fewer than one batch of" if asked is not None else "so that an epoch has several steps, not one batch of"
    return chosen, f"{n_train} training images, {why} {asked or BS}: batches of {chosen} ({n_train // chosen} an epoch)"


def _renamed(**new_names):
    "Keywords renamed (old=new): an old one still works, with a FutureWarning that gives its new name."

    def wrap(f):
        @functools.wraps(f)
        def call(*args, **kw):
            for old, new in new_names.items():
                if old in kw:
                    if new in kw:
                        raise TypeError(f"{f.__name__}() got {old}= and {new}=, the same setting: pass {new}= only")
                    warnings.warn(f"{f.__name__}(): {old}= is now {new}= ({old}= still works, for now)",
                                  FutureWarning, stacklevel=2)
                    kw[new] = kw.pop(old)
            return f(*args, **kw)

        return call

    return wrap


@_renamed(fast="fast_data")
def get_data(
    source: str | os.PathLike = "imagenette-160",
    presize: int = 160,
    resize: int = 128,
    bs: int | None = None,
    classes: list[str] | int | None = None,
    subset: int | tuple[int, int] | None = None,
    valid_name: str | None = None,
    num_workers: int | None = None,
    device=None,
    check_images: bool = True,
    bad_images: str = "skip",
    flip: bool = True,
    fast_data: bool = False,
    holdout: float = 0.0,
    valid_pct: float = 0.2,
    label_col: str | None = None,
    seed: int = 42,
    augment: str = "chapter",
    stats=imagenet_stats,
    resample: str = "bilinear",
    valid_crop: float = 1.0,
) -> DataLoaders:
    """The chapter's DataLoaders: Resize(presize) per item, min_scale=0.5 augmentation to `resize`, ImageNet stats.

    `bs`: the batch size; None, the chapter's 128, smaller for a small training set (`choose_bs`, said in a line).

    `source`: a folder with train/ and val/ (or valid/), a folder of class folders (a seeded `valid_pct` split),
    a CSV of image paths and labels in fastai's from_csv form (`label_col`; `is_valid` if it has one, else the
    split), a data set's name or a URL. Images of any size and shape are resized and cropped as fastai's Resize.
    `fast_data=True` (earlier `fast`): the same images decoded once into a uint8 cache and augmented in batches on
    the training device (resnets.fastdata); several times faster where decoding and augmentation bound the training.
    `holdout`: validate on this fraction of the training images (a fixed sample per class), not on val/.
    `augment="light"`: the random square crop and the flip only (no rotation, zoom, warp or lighting).
    `stats`, `resample`, `valid_crop`: what pretrained weights were trained with (resnets.pretrained): the mean and
    std, the filter images are first resized with (bilinear, fastai's; bicubic, timm's), and the side of the centre
    crop validation keeps of the presize square before resizing it to `resize` (1: all of it, the chapter's)."""
    for k, v in {"presize": presize, "resize": resize, **({} if bs is None else {"bs": bs})}.items():
        check_number(k, v)
    if resize > presize:
        raise InputError(f"resize ({resize}) is larger than presize ({presize}): use presize >= resize")
    if bad_images not in ("skip", "raise"):
        raise InputError(f"bad_images must be 'skip' or 'raise', got {bad_images!r}")
    check_choice("augment", augment, AUGMENTS)  # the record's check: get_data is also called without one
    check_choice("resample", resample, RESAMPLES)
    check_number("valid_crop", valid_crop, kind=(int, float), low=0, strict=True)
    if valid_crop > 1:
        raise InputError(f"valid_crop is the side of validation's centre crop, a fraction up to 1, got {valid_crop}")
    path = resolve_source(source)
    train, valid, table = find_split(path, valid_name, classes, subset, check_images, bad_images, valid_pct,
                                     label_col, seed)
    if holdout:  # a fixed sample of each class's training images (seed 0), whatever the run's seed
        train, valid = _random_split(train, table or {f: parent_label(f) for f in train}, holdout, seed=0)
    label = class_label if table is None else partial(table_label, table=table)
    bs, why = choose_bs(len(train), bs)
    if why:
        print(f"resnets: {why}")
    if fast_data:
        dls = fast_dataloaders(train, valid, presize, resize, bs, flip=flip, device=device, label=label,
                               augment=augment, stats=stats, resample=resample, valid_crop=valid_crop,
                               num_workers=num_workers)
    else:
        held = set(valid)
        augment_tfms = aug_transforms(min_scale=0.5, size=resize, do_flip=flip, **AUGMENT_KW[augment])
        for t in augment_tfms:  # validation's centre crop (fastai's valid_scale scales each side of the square)
            if isinstance(t, RandomResizedCropGPU):
                t.valid_scale = valid_crop
        dblock = DataBlock(
            blocks=(ImageBlock(RGBImage), CategoryBlock),  # 16-bit greyscale scaled, not clipped
            splitter=FuncSplitter(held.__contains__),
            get_y=label,  # readable names in show_batch, plots, results and predictions
            item_tfms=Resize(presize, resamples=(RESAMPLES[resample], Image.NEAREST)),
            batch_tfms=[*augment_tfms, Normalize.from_stats(*stats)],
        )
        kw = {} if num_workers is None else {"num_workers": num_workers}
        dls = dblock.dataloaders(train + valid, bs=bs, device=device, **kw)
    dls.path = path if path.is_dir() else path.parent
    return dls
