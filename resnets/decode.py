"""The images decoded once: every file's presize square (fastai's `Resize(presize)` on a validation image) and,
for non-square images, the whole image with its shorter side at presize (a "strip", where a training crop is taken
from), each stored as uint8 in a memory-mapped cache file (resnets.cache: the file format, its checksums, the lock
and the size limit). resnets.fastdata reads them into batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from fastprogress.fastprogress import progress_bar
from PIL import Image

from .cache import (
    LIMIT_ENV,
    cache_folder,
    cache_limit,
    checksum,
    disk_free,
    fill_cache,
    locked,
    open_cache,
    prune,
    read_info,
    shown,
)
from .files import DiskError, atomic_write, check_writable, disk_error, size_text
from .images import image_size, open_rgb, to_rgb

__all__ = ["RESAMPLES", "load_square", "load_strip", "crop_strip", "build_cache", "build_strips"]

# The filters images are first resized with: fastai's Resize uses bilinear, timm's pretrained weights bicubic.
RESAMPLES = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def load_square(img, size: int, resample: str = "bilinear") -> np.ndarray:
    """fastai's `Resize(size)` on a validation image: the centre square (its side the shorter side, as fastai
    rounds it), resized with PIL's `resample` filter. Path or PIL image in, uint8 (size, size, 3) out."""
    im = to_rgb(img) if isinstance(img, Image.Image) else open_rgb(img)
    w, h = im.size
    m = min(w / size, h / size)
    side = int(m * size)
    left, top = int(0.5 * (w - side)), int(0.5 * (h - side))
    im = im.crop((left, top, left + side, top + side)).resize((size, size), RESAMPLES[resample])
    return np.array(im, dtype=np.uint8)  # a writable copy


def _strip_size(w: int, h: int, size: int) -> tuple[int, int]:
    "An image's size with its shorter side resized to `size`, as (short, long) = (size, L)."
    return size, max(size, round(max(w, h) * size / min(w, h)))


def _load_strip(img, size: int, resample: str = "bilinear") -> tuple[np.ndarray, bool]:
    "`load_strip`'s array, and whether the image is a portrait one."
    im = open_rgb(img)
    w, h = im.size
    _, long = _strip_size(w, h, size)
    arr = np.asarray(im.resize((long, size) if w >= h else (size, long), RESAMPLES[resample]), dtype=np.uint8)
    return (arr.transpose(1, 0, 2) if w >= h else arr), h > w


def load_strip(img, size: int, resample: str = "bilinear") -> np.ndarray:
    """The whole image, its shorter side resized to `size` with PIL's `resample` filter, as uint8 (L, size, 3), the
    longer side first (a landscape image transposed) so that it is one contiguous block of a strips cache."""
    return _load_strip(img, size, resample)[0]


def crop_strip(strip: np.ndarray, portrait: bool, pct: float) -> np.ndarray:
    "The (size, size, 3) square at `pct` along a strip (0: top or left, 1: bottom or right), where Resize puts it."
    long, size = strip.shape[:2]
    start = int(pct * (long - size))
    sq = strip[start : start + size]
    return sq if portrait else sq.transpose(1, 0, 2)


def _cache_key(files: list[Path], size: int, resample: str = "bilinear") -> str:
    # v2: fastai's centre crop, then resize; v3: EXIF orientation applied; another filter than fastai's bilinear is
    # another cache
    h = hashlib.sha1(f"v3 {size}{'' if resample == 'bilinear' else ' ' + resample}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode(errors="surrogateescape"))  # (non-UTF-8 names too)
    return h.hexdigest()[:16]


CHUNK = 64  # images a worker decodes per task


def _decode_into(args) -> list[int]:
    "A worker's task: decode its files straight into their slots of the cache being built; their checksums."
    tmp, load, size, jobs = args
    arr = np.load(tmp, mmap_mode="r+")
    crcs = []
    for slot, f in jobs:
        arr[slot] = load(f, size)
        crcs.append(checksum(arr[slot]))
    arr.flush()
    return crcs


def _build(path: Path, shape: tuple, load, files: list, size: int, slots: list, workers: int | None, info: dict):
    """Decode `files` with `load` in worker processes into a new cache of `shape` at `path`, each into its slot
    (resnets.cache writes it with its checksums; a half-built file never has the final name). The workers write
    into the file themselves: the decoded images do not travel back through this process."""
    check_writable(path.parent)  # before any decoding
    need, free = int(np.prod(shape)), disk_free(path.parent)
    if need > free:  # refused before the disk is filled (a checkpoint could not be written then)
        raise DiskError(f"cannot write {path}: no space left on the disk ({size_text(need)} needed, "
                        f"{size_text(free)} free)")
    jobs = list(zip(slots, files))
    tasks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]

    def fill(tmp: Path) -> list[int]:
        with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
            it = pool.map(_decode_into, [(tmp, load, size, task) for task in tasks])
            bar = progress_bar(it, total=len(tasks)) if sys.stdout.isatty() else it  # no bar in a log file
            return [crc for crcs in bar for crc in crcs]

    fill_cache(path, shape, fill, {"source": _common_folder(files), "images": len(files), "size": size, **info})
    removed = prune(path.parent, keep={path.stem})
    if removed:
        print(f"resnets: removed {len(removed)} least recently used image cache(s) from {shown(path.parent)} (over "
              f"${LIMIT_ENV}, {cache_limit() / 1e9:.0f} GB, or of an earlier version): "
              f"{sum(c['bytes'] for c in removed) / 1e9:.2f} GB")


def _common_folder(files: list[Path]) -> str:
    return os.path.commonpath([str(f.parent) for f in files]) if files else ""


def build_cache(files: list[Path], size: int, folder: str | os.PathLike | None = None, workers: int | None = None,
                resample: str = "bilinear"):
    """A uint8 array (n, size, size, 3) of the decoded images, memory-mapped from a cache file built once (checked
    when opened: resnets.cache). Raises a DiskError when the cache folder cannot take it."""
    folder = Path(folder) if folder is not None else cache_folder()
    _make_folder(folder)
    path = folder / f"images-{size}px-{len(files)}-{_cache_key(files, size, resample)}.npy"
    slots = list(range(len(files)))
    with locked(folder):  # another rank (or run) building it: wait, then read it
        arr = open_cache(path, slots)
        if arr is None:
            print(f"resnets: decoding {len(files)} images once, at {size} px, into {shown(path)}")
            _build(path, (len(files), size, size, 3), partial(load_square, resample=resample), files, size, slots,
                   workers, {"kind": "squares"})
            arr = np.load(path, mmap_mode="r")
    return arr


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err = disk_error(e, folder)
        if err is None:
            raise
        raise err from None


def build_strips(files: list[Path], size: int, folder: str | os.PathLike | None = None, workers: int | None = None,
                 resample: str = "bilinear"):
    """The non-square images among `files`, whole, their shorter sides resized to `size`, one after another in one
    uint8 array (total length, size, 3) memory-mapped from a cache file built once, and an index of them: rows of
    (position in `files`, start, length, portrait). No images file when every image is a square. Validation reads
    the squares of `build_cache`, but the strips cover every file, so that one cache serves any split of them."""
    folder = Path(folder) if folder is not None else cache_folder()
    _make_folder(folder)
    path = folder / f"strips-{size}px-{len(files)}-{_cache_key(files, size, resample)}.npy"
    with locked(folder):
        return _strips(path, files, size, workers, resample)


def _strips(path: Path, files: list[Path], size: int, workers: int | None, resample: str):
    info = read_info(path)
    if info is not None and "index" in info:
        index = np.array(info["index"], dtype=np.int64).reshape(-1, 4)
        if not len(index):
            return None, index
        arr = open_cache(path, [slice(s, s + n) for _, s, n, _ in index])
        if arr is not None:
            return arr, index
    rows, start = [], 0
    for i, f in enumerate(files):
        w, h = image_size(f)  # the header only, as open_rgb turns the image (EXIF orientation)
        if w != h:
            long = _strip_size(w, h, size)[1]
            rows.append((i, start, long, int(h > w)))
            start += long
    index = np.array(rows, dtype=np.int64).reshape(-1, 4)
    if not len(index):  # every image a square: the description alone, so that the headers are not read again
        info = {"source": _common_folder(files), "images": 0, "size": size, "kind": "strips", "index": [], "crc": []}
        atomic_write(path.with_suffix(".json"), json.dumps(info).encode())
        return None, index
    print(f"resnets: decoding {len(index)} non-square images once more, whole, into {shown(path)}")
    _build(path, (start, size, 3), partial(load_strip, resample=resample), [files[i] for i in index[:, 0]], size,
           [slice(s, s + n) for _, s, n, _ in index], workers, {"kind": "strips", "index": index.tolist()})
    return np.load(path, mmap_mode="r"), index
