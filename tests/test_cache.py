"""resnets.cache and resnets.files: nothing silently wrong, stuck or left behind on disk (faults a trial found: a zeroed
or truncated cache trained on or crashing, temporaries of killed writers left forever, caches piling up, raw
tracebacks for a full disk or a read-only folder)."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tree
from resnets import InputError, get_data, run
from resnets.cache import list_caches, open_cache, prune
from resnets.decode import build_cache, build_strips
from resnets.files import DiskError, atomic_write, check_writable, sweep, temporary


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def files(tmp_path):
    return sorted(make_tree(tmp_path / "d", n_train=3, n_valid=2).rglob("*.jpg"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _read_only(monkeypatch, folder, code=errno.EROFS):
    "Files can no longer be created under `folder` (as on a read-only disk; the tests may run as root)."
    real = os.open

    def refuse(path, flags, *a, **k):
        if str(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)


def test_a_zeroed_cache_is_found_and_built_again(files, cache, capsys):
    good = np.array(build_cache(files, 24))
    (path,) = cache.glob("images-*.npy")
    header = path.stat().st_size - good.nbytes
    with open(path, "r+b") as f:  # the images overwritten with zeros, the size and header unchanged
        f.seek(header)
        f.write(bytes(good.nbytes))
    capsys.readouterr()
    again = build_cache(files, 24)
    out = capsys.readouterr().out
    assert "cannot be used" in out and "is not what was written" in out and "decoding 10 images" in out
    assert np.array_equal(again, good)


def test_damage_to_any_one_entry_of_a_large_cache_is_found(tmp_path, cache, capsys):
    "Every entry's checksum is checked on opening (a sample of 256 missed damage elsewhere: trained on wrong pixels)."
    from conftest import save_image

    files = [save_image(tmp_path / "many" / f"{i:03d}.png", size=(8, 8), seed=i) for i in range(300)]
    good = np.array(build_cache(files, 8))
    (path,) = cache.glob("images-*.npy")
    entry = 6  # not among the 256 the old check sampled (np.linspace(0, 299, 256).astype(int) skips 6, 13, ...)
    header = path.stat().st_size - good.nbytes
    with open(path, "r+b") as f:
        f.seek(header + entry * good[0].nbytes)
        f.write(bytes(255 - good[entry].reshape(-1)))
    capsys.readouterr()
    again = build_cache(files, 8)
    assert f"entry {entry} is not what was written" in capsys.readouterr().out
    assert np.array_equal(again, good)


def test_a_cache_opened_again_is_read_not_decoded_again(tmp_path, cache, files, capsys):
    "A whole cache passes its own check: a second open decodes nothing (squares and strips, whose entries are slices)."
    from PIL import Image

    wide = []
    for i, w in enumerate((60, 45, 90)):
        wide.append(tmp_path / f"w{i}.png")
        Image.new("RGB", (w, 30), (80 * i, 10, 0)).save(wide[-1])
    first = np.array(build_cache(files, 24)), np.array(build_strips(wide, 20)[0])
    capsys.readouterr()
    second = np.array(build_cache(files, 24)), np.array(build_strips(wide, 20)[0])
    assert capsys.readouterr().out == "", "nothing decoded, nothing found damaged"
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_a_cache_whose_description_cannot_be_written_is_not_left_in_place(files, cache, monkeypatch):
    "The .npy is renamed into place only after its .json is written: a failed .json leaves no cache to trust."
    import resnets.cache as cache_module

    def full(path, data, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_write", full)
    with pytest.raises(DiskError):
        build_cache(files, 24)
    assert not list(cache.glob("images-*.npy")), "no cache under its final name"


def test_a_truncated_cache_is_built_again_not_a_traceback(files, cache, capsys):
    good = np.array(build_cache(files, 24))
    (path,) = cache.glob("images-*.npy")
    os.truncate(path, path.stat().st_size // 2)
    capsys.readouterr()
    assert np.array_equal(build_cache(files, 24), good)
    assert "cannot be used" in capsys.readouterr().out


def test_a_cache_of_an_earlier_version_is_rebuilt_with_checksums(files, cache, capsys):
    build_cache(files, 24)
    (path,) = cache.glob("images-*.npy")
    path.with_suffix(".json").unlink()  # as resnets 0.3 left it: the array alone
    capsys.readouterr()
    build_cache(files, 24)
    assert "earlier version" in capsys.readouterr().out and path.with_suffix(".json").exists()


def test_a_strips_cache_is_checked_too(tmp_path, cache, capsys):
    from PIL import Image

    files = []
    for i in range(3):
        files.append(tmp_path / f"w{i}.png")
        Image.new("RGB", (60, 30), (80 * i, 0, 0)).save(files[-1])
    strips, index = build_strips(files, 20)
    good = np.array(strips)
    (path,) = cache.glob("strips-*.npy")
    np.save(path, np.zeros_like(good))  # a rewritten file: another header is no help either
    capsys.readouterr()
    again, index2 = build_strips(files, 20)
    assert "cannot be used" in capsys.readouterr().out and np.array_equal(again, good)
    assert np.array_equal(index, index2)


def test_an_unwritable_cache_folder_falls_back_to_decoding(files, cache, monkeypatch, capsys):
    _read_only(monkeypatch, cache)
    train = [f for f in files if "train" in f.parts]
    valid = [f for f in files if "val" in f.parts]
    from resnets.fastdata import fast_dataloaders

    dls = fast_dataloaders(train, valid, 32, 24, bs=2, device="cpu")
    out = capsys.readouterr().out
    assert "no image cache" in out and "decoding every image as it is read" in out
    xb, yb = dls.valid.one_batch()
    assert xb.shape == (2, 3, 24, 24)
    assert not list(cache.glob("*.npy"))


def test_a_cache_too_big_for_the_disk_is_not_written(files, cache, monkeypatch, capsys):
    import resnets.decode as decode

    monkeypatch.setattr(decode, "disk_free", lambda folder: 1000)  # fewer bytes than 10 images at 24 px
    with pytest.raises(DiskError, match=r"no space left on the disk \(17.3 kB needed, 1.0 kB free\)"):
        build_cache(files, 24)  # (it said "0.0 GB needed, 0.0 GB free")
    assert not list(cache.glob("images-*"))


def test_the_cache_folder_is_kept_within_its_limit_and_listed(files, cache, monkeypatch, capsys):
    from resnets.cli import main

    build_cache(files, 24)
    first = {c["name"] for c in list_caches(cache)}
    monkeypatch.setenv("RESNETS_CACHE_LIMIT", str(1e-6))  # 1 kB: only the newest stays
    build_cache(files, 16)
    out = capsys.readouterr().out
    names = {c["name"] for c in list_caches(cache)}
    assert "removed 1 least recently used image cache" in out and not first & names and len(names) == 1
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "images-16px-10-" in out and str(files[0].parents[2]) in out and "1 cache(s)" in out
    (cache / "images-32px-3-0123456789abcdef.npy").write_bytes(b"old")  # an earlier version's: no description
    assert "earlier version" in (main(["cache"]) == 0 and capsys.readouterr().out)
    monkeypatch.delenv("RESNETS_CACHE_LIMIT")
    assert len(prune(cache)) == 1, "--prune removes earlier versions' caches whatever the size"
    assert main(["cache", "--clear"]) == 0 and not list_caches(cache)


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path, cache, files):
    dead, folder = _dead_pid(), tmp_path / "run"
    folder.mkdir()
    stale = temporary(folder / "checkpoint.safetensors")
    stale = stale.with_name(stale.name.replace(f"-{os.getpid()}.", f"-{dead}."))
    live = temporary(folder / "results.json")  # this process's: a write under way
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another live writer's
    busy = live.with_name(live.name.replace(f"-{os.getpid()}.", f"-{other.pid}."))
    old = folder / "images-24px-10-abc.123456789.tmp"  # an earlier version's, its pid over Linux's pid_max (2**22)
    theirs = [folder / "notes.123456789.tmp", folder / f".draft.{dead}.tmp"]  # not the library's: left alone
    try:
        for p in (stale, live, busy, old, *theirs):
            p.write_bytes(b"x" * 1000)
        atomic_write(folder / "results.json", b"{}")
        assert not stale.exists() and not old.exists() and all(p.exists() for p in theirs)
        assert live.exists() and busy.exists(), "a live process's temporaries are left alone, this one's or another's"
        assert sweep(folder) == [] and (folder / "results.json").read_bytes() == b"{}"
    finally:
        other.kill()
        other.wait()
    assert sweep(folder) == [busy], "once its process is gone"
    cache.mkdir()
    left = temporary(cache / "images-24px-10-abc.npy")
    left = left.with_name(left.name.replace(f"-{os.getpid()}.", f"-{dead}."))
    left.write_bytes(b"y")
    build_cache(files, 24)
    assert not left.exists(), "a killed cache build's temporary goes with the next build"


def test_a_full_disk_is_one_line_and_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import resnets.files as f

    path = tmp_path / "results.json"
    atomic_write(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(f.os, "fsync", full)
    with pytest.raises(DiskError, match=r"cannot write .*results.json: no space left on the disk") as e:
        atomic_write(path, b"new")
    assert "\n" not in str(e.value) and path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "its temporary removed"


def test_a_read_only_run_folder_is_refused_before_any_training(tmp_path, monkeypatch):
    import resnets.training as training

    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(monkeypatch, out)
    built = []
    monkeypatch.setattr(training, "build", lambda *a, **k: built.append(1) or pytest.fail("trained"))
    for resume in (False, True):
        with pytest.raises(DiskError, match="cannot write .*ro: no permission .*--out"):
            run("cnn", data=root, out=out, resume=resume, size=32, presize=32, bs=2, epochs=1, progress=False)
    assert not built
    with pytest.raises(InputError, match="is a file"):
        check_writable(root / "train" / "cat" / "cat0.jpg" / "x")


def test_a_full_disk_during_training_is_one_line_from_the_command_line(tmp_path, monkeypatch, capsys):
    import resnets.files as f
    from resnets.cli import main

    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    real = f.os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").find("checkpoint") >= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(f.os, "fsync", full)
    code = main(["run", "cnn", "--data", str(root), "--out", str(tmp_path / "r"), "--size", "32", "--presize", "32",
                 "--bs", "2", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no space left on the disk" in err[0] and "Exception occured" not in err[0]


def test_get_data_fast_still_reads_after_a_rebuild(tmp_path, cache):
    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    a = get_data(root, 32, 32, 2, fast_data=True, num_workers=0, device="cpu").valid.one_batch()[0]
    for p in cache.glob("images-*.npy"):
        os.truncate(p, 100)
    b = get_data(root, 32, 32, 2, fast_data=True, num_workers=0, device="cpu").valid.one_batch()[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert open_cache(next(cache.glob("images-*.npy")), list(range(6))) is not None
