import os
import subprocess
import sys

import pytest
import torch
from fastai.data.all import URLs
from fastai.data.external import fastai_cfg
from fastai.vision.all import Resize, imagenet_stats

from conftest import make_tree, save_image
from resnets import IMAGENETTE_NAMES, DataError, find_items, get_data, resolve_source


def tiny(path, **kw):
    return get_data(path, presize=40, resize=32, bs=4, num_workers=0, **kw)


def test_generated_tree_with_odd_image_modes(tree):
    # grey-scale, CMYK and RGBA images (and PNGs) must simply work: all become 3-channel tensors
    save_image(tree / "train" / "cat" / "grey.jpg", mode="L")
    save_image(tree / "train" / "dog" / "cmyk.jpg", mode="CMYK")
    save_image(tree / "train" / "dog" / "rgba.png", mode="RGBA")
    save_image(tree / "val" / "cat" / "grey.png", mode="L")
    dls = tiny(tree)
    assert dls.vocab == ["cat", "dog"]
    assert (len(dls.train_ds), len(dls.valid_ds)) == (15, 7)
    xs = torch.cat([x for x, _ in dls.train] + [x for x, _ in dls.valid])
    assert xs.shape[1:] == (3, 32, 32) and xs.shape[0] == 15 - 15 % 4 + 7  # train drops its last partial batch
    assert torch.isfinite(xs).all()


def test_the_chapters_transforms(tree):
    dls = tiny(tree)
    (resize,) = [t for t in dls.train.after_item.fs if isinstance(t, Resize)]
    assert resize.size == (40, 40)  # presize
    tfms = {type(t).__name__: t for t in dls.train.after_batch.fs}
    crop = tfms["RandomResizedCropGPU"]
    assert (crop.size, crop.min_scale) == ((32, 32), 0.5)  # resize, at least half the image
    assert "Flip" in tfms
    norm = tfms["Normalize"]
    torch.testing.assert_close(norm.mean.flatten().cpu(), torch.tensor(imagenet_stats[0]))
    torch.testing.assert_close(norm.std.flatten().cpu(), torch.tensor(imagenet_stats[1]))


def test_split_is_by_grandparent_folder(tree):
    items, valid_name = find_items(tree)
    assert valid_name == "val" and len(items) == 2 * 6 + 2 * 3
    dls = tiny(tree)
    assert all(p.parent.parent.name == "train" for p in dls.train_ds.items)
    assert all(p.parent.parent.name == "val" for p in dls.valid_ds.items)


def test_valid_folder_named_valid(tmp_path):
    dls = tiny(make_tree(tmp_path / "d", valid_name="valid"))
    assert len(dls.valid_ds) == 6


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no folder at"):
        tiny(tmp_path / "nope")


def test_no_train_folder(tree):
    os.rename(tree / "train", tree / "training")  # neither train/ + val/, nor images in class folders
    with pytest.raises(DataError, match=r"no images under .*expected train/<class>/ and val/<class>/ folders, or one "
                       "folder of images per class"):  # fmt: skip
        tiny(tree)


def test_no_val_folder(tree):
    os.rename(tree / "val", tree / "test")
    with pytest.raises(DataError, match=r"no `val/` folder"):
        tiny(tree)


def test_class_only_in_val(tree):
    save_image(tree / "val" / "zebra" / "z.jpg")
    with pytest.raises(DataError, match=r"classes in val/ with no training images: zebra"):
        tiny(tree)


def test_folder_without_images(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no image files under .*train"):
        tiny(tmp_path)


@pytest.fixture
def tree_with_bad_images(tree):
    good = (tree / "train" / "cat" / "cat0.jpg").read_bytes()
    (tree / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tree / "train" / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    (tree / "val" / "dog" / "empty.jpg").write_bytes(b"")
    return tree


def test_bad_images_are_skipped_and_reported(tree_with_bad_images, capsys):
    dls = tiny(tree_with_bad_images)
    out = capsys.readouterr().out
    assert "skipping 3 of 21 image files cannot be read" in out
    for name in ("truncated.jpg", "corrupt.jpg", "empty.jpg"):
        assert name in out
    assert (len(dls.train_ds), len(dls.valid_ds)) == (12, 6)
    for _ in dls.train:  # and it really trains on the good ones
        pass


def test_bad_images_raise_on_request(tree_with_bad_images):
    with pytest.raises(DataError, match=r"(?s)3 of 21 image files cannot be read.*bad_images='skip'"):
        tiny(tree_with_bad_images, bad_images="raise")


def test_subset_and_classes_are_deterministic(tmp_path):
    tree = make_tree(tmp_path / "d", classes=("a", "b", "c"), n_train=10, n_valid=5)
    a, _ = find_items(tree, classes=2, subset=(4, 2))
    b, _ = find_items(tree, classes=["a", "b"], subset=(4, 2))
    assert a == b and len(a) == 2 * 4 + 2 * 2
    assert {p.parent.name for p in a} == {"a", "b"}
    with pytest.raises(DataError, match="unknown classes"):
        find_items(tree, classes=["a", "zebra"])
    for n in (0, -1, 4):
        with pytest.raises(DataError, match=r"classes must be between 1 and 3"):
            find_items(tree, classes=n)


@pytest.mark.parametrize("kw,match", [
    (dict(resize=0), "resize must be an integer >= 1"), (dict(bs=-1), "bs must"),
    (dict(resize=64), "larger than presize"), (dict(bad_images="ignore"), "bad_images"),
])  # fmt: skip
def test_bad_arguments(tree, kw, match):
    args = dict(presize=40, resize=32, bs=4) | kw
    with pytest.raises(ValueError, match=match):
        get_data(tree, **args)


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError, match=r"not a known data set.*imagenette-160"):
        resolve_source("imagenet-160")


@pytest.fixture
def fastai_home(tmp_path, monkeypatch):
    "A fresh fastai config folder (fastai caches its config, so the cache is cleared around the test)."
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai"))
    fastai_cfg.cache_clear()
    yield tmp_path / "fastai"
    fastai_cfg.cache_clear()


def test_failed_download_says_how_to_use_a_local_copy(fastai_home, tmp_path):
    # port 9 (discard) on localhost refuses at once: the same path as having no network
    with pytest.raises(DataError, match=r"could not download .*get_data\('/path/to/nosuchset'\)") as e:
        resolve_source("http://127.0.0.1:9/nosuchset.tgz")
    assert f"in $RESNETS_DATA or at {fastai_home / 'data' / 'nosuchset'}" in str(e.value)
    # from the command line, the hint is the command the user ran, with --data; nothing but the error on stderr
    cmd = [sys.executable, "-m", "resnets", "run", "cnn", "--data", "http://127.0.0.1:9/nosuchset.tgz",
           "--epochs", "1"]  # fmt: skip
    env = {**os.environ, "FASTAI_HOME": str(fastai_home)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "resnets run cnn --epochs 1 --data /path/to/nosuchset" in p.stderr, p.stderr
    assert "\u2588" not in p.stdout + p.stderr, "no stray progress-bar block"
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "RESNETS_DATA_HINT": "make run DATA=/path/to/{folder}"})  # what make sets
    assert "make run DATA=/path/to/nosuchset" in p.stderr, p.stderr


def test_one_lookup_finds_a_local_copy_before_downloading(tmp_path, monkeypatch, imagenette):
    from resnets.data import data_folders

    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "imagenette2-160").symlink_to(imagenette)
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "sets"))
    assert resolve_source("imagenette-160") == tmp_path / "sets" / "imagenette2-160"
    assert data_folders()[0] == tmp_path / "sets"
    monkeypatch.delenv("RESNETS_DATA")
    if (data_folders()[-1] / "imagenette2-160").is_dir():  # a checkout beside the project's shared data
        assert resolve_source("imagenette-160") == data_folders()[-1] / "imagenette2-160"


def test_names_and_urls_use_fastais_data_folder_without_network(fastai_home, imagenette, monkeypatch):
    monkeypatch.setattr("resnets.data.data_folders", lambda: [])  # no local copy: fastai's own folder
    expect = fastai_home / "data" / "imagenette2-160"
    expect.parent.mkdir(parents=True)
    expect.symlink_to(imagenette)
    assert resolve_source("imagenette-160") == expect
    assert resolve_source(URLs.IMAGENETTE_160) == expect


def test_real_imagenette(imagenette):
    dls = get_data(imagenette, presize=160, resize=128, bs=64)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (9469, 3925)
    assert dls.c == 10 and list(dls.vocab) == sorted(IMAGENETTE_NAMES.values()), "readable names, not WordNet ids"
    x, y = dls.one_batch()
    assert x.shape == (64, 3, 128, 128) and y.shape == (64,)
    dls.show_batch(max_n=4)  # the chapter shows a batch of 4

