"""The fast path's image cache on disk: written once with checksums, checked when opened, kept within a size.

A cache is `STEM.npy` (uint8, memory-mapped by every run that uses the same images) and `STEM.json` beside it:
what it holds (the data folder, how many images, at what size), a CRC-32 of each of its entries, and, for a strips
cache, the index of its strips. The .npy is renamed into place only after the .json is written, so a kill leaves no
half cache under the final name; its temporary is swept by the next build (resnets.files).

Opening one checks its size against its header and the checksum of every entry: a truncated file, a zeroed one or
damage to any one image is found and the cache is built again, with a line saying why; nothing damaged is trained
on. The check reads the whole file, which the first epoch reads anyway (it is then in the page cache): the extra
cost is the CRC-32 itself, under a second a gigabyte on 2 cores (docs/guide.md). A folder that cannot be written
(read-only, or a full disk) is no error: the run decodes each image as it reads it, as the chapter's pipeline does,
and says so.

The folder is kept within `$RESNETS_CACHE_LIMIT` gigabytes (default 20): after a new cache is built, the least
recently used others are removed. `resnets cache` lists them; `--prune` and `--clear` remove them. One process at
a time checks and builds (`locked`): the ranks of a distributed run build each cache once, on each machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_write, disk_error, sweep, temporary

__all__ = ["LIMIT_ENV", "cache_folder", "cache_limit", "locked", "write_cache", "fill_cache", "checksum", "open_cache",
           "read_info", "list_caches", "prune", "describe", "disk_free", "shown"]

LIMIT_ENV = "RESNETS_CACHE_LIMIT"
DEFAULT_LIMIT_GB = 20.0


def shown(path) -> str:
    "A path as the library prints it: the home folder as ~ (a notebook's outputs name no machine's user)."
    home, text = str(Path.home()), str(path)
    return "~" + text[len(home) :] if home not in ("", "/") and text.startswith(home + os.sep) else text


def cache_folder() -> Path:
    return Path(os.environ.get("RESNETS_CACHE", Path.home() / ".cache" / "resnets"))


def cache_limit() -> float:
    "The cache folder's size limit in bytes, from $RESNETS_CACHE_LIMIT (gigabytes; 0: no limit)."
    value = os.environ.get(LIMIT_ENV, "").strip()
    try:
        gb = float(value) if value else DEFAULT_LIMIT_GB
    except ValueError:
        raise InputError(f"${LIMIT_ENV} is the image cache's size limit in gigabytes, got {value!r}") from None
    return float("inf") if gb <= 0 else gb * 1e9


@contextlib.contextmanager
def locked(folder: Path):
    """Hold the cache folder's lock (an flock on its `.lock`): one process at a time checks and builds a cache, so
    the ranks of a distributed run on one machine (and two runs at once) build each cache once, the others waiting,
    then reading it. A folder where no lock file can be made is used unlocked (nothing can be built in it either)."""
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _info_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_info(path: Path) -> dict | None:
    "The description written beside a cache file, or None if there is none (or it cannot be read)."
    try:
        return json.loads(_info_path(path).read_text())
    except (OSError, ValueError):
        return None


def checksum(block: np.ndarray) -> int:
    "An entry's checksum, as the cache's description records it."
    return zlib.crc32(np.ascontiguousarray(block).data)


def write_cache(path: Path, shape: tuple, entries, info: dict) -> None:
    """Write the uint8 array of `shape` at `path` from `entries` ((slot, array) pairs, a slot an index or a slice),
    with its description and the entries' checksums in `path`'s .json. Raises a DiskError (one line) when the
    folder cannot take it."""

    def fill(tmp: Path) -> list[int]:
        arr, crcs = np.load(tmp, mmap_mode="r+"), []
        for slot, img in entries:
            arr[slot] = img
            crcs.append(checksum(arr[slot]))
        arr.flush()
        return crcs

    fill_cache(path, shape, fill, info)


def fill_cache(path: Path, shape: tuple, fill, info: dict) -> None:
    """Create the uint8 array of `shape` (an .npy file under a temporary name), have `fill(temporary path)` write
    its entries (in this process or others, through a memory map) and return their checksums in order, then give it
    `path`'s name with its description. Raises a DiskError (one line) when the folder cannot take it."""
    sweep(path.parent)
    tmp = temporary(path)
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()  # the header and the size
        crcs = fill(tmp)
        atomic_write(_info_path(path), json.dumps({**info, "crc": crcs, "created": time.time()}).encode())
        os.replace(tmp, path)
    except OSError as e:
        err = disk_error(e, path.parent)
        if err is None:
            raise
        raise err from None
    finally:
        tmp.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    for p in (path, _info_path(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def open_cache(path: Path, slots: list) -> np.ndarray | None:
    """The cache at `path` memory-mapped, after checking it (its size, and the checksum of each of its `slots`),
    or None when it is missing or damaged (then removed, with a line saying why, to be built again)."""
    if not path.exists():
        return None
    info = read_info(path)
    try:
        if info is None or len(info.get("crc", ())) != len(slots):
            raise ValueError("it has no checksums: an earlier version of resnets wrote it" if info is None else
                             "its checksums do not match its entries")
        arr = np.load(path, mmap_mode="r")  # a truncated file: "mmap length is greater than file size"
        for i, (slot, crc) in enumerate(zip(slots, info["crc"])):
            if checksum(arr[slot]) != crc:
                raise ValueError(f"entry {i} is not what was written (the file was damaged or overwritten)")
    except (OSError, ValueError, IndexError, KeyError, TypeError) as e:
        print(f"resnets: the image cache {shown(path)} cannot be used ({e}): building it again")
        _remove(path)
        return None
    try:
        os.utime(_info_path(path))  # when it was last used: `prune` removes the least recently used first
    except OSError:
        pass
    return arr


def list_caches(folder: Path | None = None) -> list[dict]:
    """The caches in `folder` (default `cache_folder()`), least recently used first: name, files, bytes, last use,
    and what they hold; files of earlier versions (no description) are listed as such."""
    folder = Path(folder) if folder is not None else cache_folder()
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix in (".npy", ".json") and not p.name.startswith("."):
            stem = p.stem.removesuffix("-index")  # earlier versions kept a strips index beside the strips
            groups.setdefault(stem, []).append(p)
    out = []
    for stem, files in groups.items():
        desc = read_info(folder / f"{stem}.npy") or {}
        info = folder / f"{stem}.json"
        used = (info if info.exists() else max(files, key=lambda f: f.stat().st_mtime)).stat().st_mtime
        out.append({"name": stem, "files": sorted(files), "bytes": sum(f.stat().st_size for f in files),
                    "used": used, "source": desc.get("source"), "images": desc.get("images"),
                    "size": desc.get("size"), "current": bool(desc)})
    return sorted(out, key=lambda c: c["used"])


def prune(folder: Path | None = None, limit: float | None = None, keep=(), older_than: float | None = None) -> list:
    """Remove caches, least recently used first, until the folder holds at most `limit` bytes (default
    `cache_limit()`); those of earlier versions and, with `older_than` (seconds), those unused for that long, go
    whatever the size. `keep`: stems never removed (the run's own). Returns the removed caches."""
    limit = cache_limit() if limit is None else limit
    caches = list_caches(folder)
    total, removed, now = sum(c["bytes"] for c in caches), [], time.time()
    for c in caches:
        old = not c["current"] or (older_than is not None and now - c["used"] > older_than)
        if c["name"] in keep or not (old or total > limit):
            continue
        for f in c["files"]:
            f.unlink(missing_ok=True)
        total -= c["bytes"]
        removed.append(c)
    return removed


def disk_free(folder: Path) -> int:
    "Bytes free on the disk of `folder` (or of the nearest folder above it that exists)."
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    return shutil.disk_usage(probe).free


def describe(folder: Path | None = None) -> str:
    "The caches of `folder` as a table, least recently used first (what `resnets cache` prints)."
    folder = Path(folder) if folder is not None else cache_folder()
    caches = list_caches(folder)
    if not caches:
        return f"no image caches in {folder}"
    lines = [f"{'last used':<17} {'GB':>6}  {'images':>7}  {'px':>4}  name (data)"]
    for c in caches:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["used"]))
        what = c["source"] or ("an earlier version's (no checksums): --prune removes it" if not c["current"] else "")
        n, px = c["images"] if c["images"] is not None else "", c["size"] or ""
        lines.append(f"{used:<17} {c['bytes'] / 1e9:>6.2f}  {n:>7}  {px:>4}  {c['name']} ({what})")
    lines.append(f"{len(caches)} cache(s), {sum(c['bytes'] for c in caches) / 1e9:.2f} GB in {folder}")
    return "\n".join(lines)
