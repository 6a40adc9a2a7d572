"""Writing files so that nothing is lost or left behind: atomic writes, temporaries that are swept, one-line errors.

  atomic_write(path, data)   through a temporary file and a rename: a kill at any moment leaves the old file whole
  temporary(path)            the name of a temporary beside `path`, with this host and process in it
  sweep(folder)              remove the temporaries a killed process of this host left in `folder`
  check_writable(folder)     one line naming the problem unless files can be written into `folder`
  disk_error(e, path, fix)   an OSError of a full disk or a read-only folder as one line (an InputError), else None
  owned(folder)              hold a run folder for one run: a second run into it is refused with one line

A kill during a write leaves its temporary behind (a checkpoint's is megabytes, an image cache's a gigabyte): every
temporary is named `.NAME.HOST-PID.XXXXXX.tmp`, and the next write into the same folder removes those whose process
is gone. Temporaries of another host (a shared folder) are left to that host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import socket
import time
from pathlib import Path

from .errors import InputError

__all__ = ["size_text", "as_umask_allows", "atomic_write", "temporary", "sweep", "check_writable", "disk_error",
           "DiskError", "FolderInUse", "owned", "RUN_LOCK"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_OURS = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{6}\.tmp$")
# earlier versions' temporaries, of the library's own files only (mkstemp's names; the cache's NAME.PID.tmp)
_OLD = re.compile(r"^(\.(checkpoint\.pth|checkpoint\.safetensors|results\.json|results\.png|study\.json)"
                  r"\.[A-Za-z0-9_]{8}\.tmp|(images|strips)-.+\.(?P<pid>\d+)\.tmp)$")
_OLD_AGE = 24 * 3600  # an earlier version's temporary without a process in its name: swept once a day old
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


class DiskError(InputError, OSError):
    "A file could not be written: the disk is full, or the folder is read-only."


class FolderInUse(InputError):
    "Another process is running into the same run folder."


RUN_LOCK = ".resnets.lock"  # in a run folder: the flock its run holds, and that run's host and process id


def temporary(path: str | os.PathLike) -> Path:
    "A temporary file's name beside `path`, hidden, naming this host and process (so that `sweep` knows it)."
    path = Path(path)
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(3)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(folder: str | os.PathLike) -> list[Path]:
    "Remove the temporaries of dead processes of this host from `folder` (and earlier versions' stale ones)."
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not e.name.endswith(".tmp"):
            continue
        ours, old = _OURS.match(e.name), _OLD.match(e.name)
        if ours:
            stale = ours["host"] == _HOST and int(ours["pid"]) != os.getpid() and not _alive(int(ours["pid"]))
        elif old and old["pid"]:
            stale = int(old["pid"]) != os.getpid() and not _alive(int(old["pid"]))
        elif old:
            stale = now - e.stat(follow_symlinks=False).st_mtime > _OLD_AGE
        else:
            continue
        if stale:
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def disk_error(e: BaseException, path, fix: str = "") -> DiskError | None:
    "A full disk or a read-only folder, as one line naming `path` (and `fix`); None for any other error."
    if not isinstance(e, OSError) or e.errno not in NO_SPACE | READ_ONLY:
        return None
    what = "no space left on the disk" if e.errno in NO_SPACE else "no permission (a read-only folder or disk)"
    return DiskError(f"cannot write {path}: {what} ({os.strerror(e.errno)}){': ' + fix if fix else ''}")


def check_writable(folder: str | os.PathLike, fix: str = "choose another folder") -> None:
    """Raise a DiskError unless a file can be created in `folder` (or in the nearest folder above it that exists, where
    it will be made), before any work is done into it."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not probe.is_dir():
        raise InputError(f"cannot write into {folder}: {probe} is a file, not a folder")
    try:
        tmp = temporary(probe / "write-check")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(tmp)
    except OSError as e:
        err = disk_error(e, folder, fix)
        if err is None:
            raise
        raise err from None


def size_text(n: float) -> str:
    "A number of bytes as people read it: 812 bytes, 4.2 MB, 1.3 GB (never '0.0 GB' for a nearly full disk)."
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def as_umask_allows(*paths: str | os.PathLike) -> None:
    """Give files the permissions a new file gets here (0666 less the umask): a library that writes its files as
    0600 (safetensors' save_file, through timm's save_for_hf) makes a model file others cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        os.chmod(p, 0o666 & ~mask)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half a file; stale temporaries
    of killed writers in the folder are swept first; a full disk or a read-only folder is one line (DiskError)."""
    path = Path(path)
    sweep(path.parent)
    tmp = temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = disk_error(e, path, "free space or make it writable; the file it replaces, if any, is whole")
        if err is not None:
            raise err from None
        raise


@contextlib.contextmanager
def owned(folder: str | os.PathLike):
    """Hold `folder` (made if missing) for one run: an exclusive flock on its RUN_LOCK, with this host and process in
    it. A second run into the folder gets a FolderInUse naming the first's process, before it reads or writes
    anything there. The kernel releases the lock when the process ends, however it ends (a kill leaves no stale
    lock). A folder that cannot be written is held unlocked (check_writable then says why, in one line); one this
    call made and that holds nothing else when the run ends is removed (a run refused early leaves no folder)."""
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise FolderInUse(f"{folder} is in use by another run (process {holder}): wait for it to finish, or "
                              "choose another output folder (--out)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        if made and [e.name for e in os.scandir(folder)] == [RUN_LOCK]:
            with contextlib.suppress(OSError):
                os.unlink(folder / RUN_LOCK)
                folder.rmdir()
        os.close(fd)
