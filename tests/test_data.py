"""resnets.data: the chapter's Imagenette pipeline, your own folders and CSVs, the hold-out split, clear errors."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.data.all import URLs
from fastai.data.external import fastai_cfg
from fastai.vision.all import Resize, imagenet_stats

from conftest import ks_statistic, make_tree, save_image
from resnets import (
    IMAGENETTE_NAMES,
    DataError,
    InputError,
    find_items,
    get_data,
    resolve_source,
)
from resnets.data import find_split


def tiny(path, **kw):
    return get_data(path, presize=40, resize=32, bs=4, num_workers=0, **kw)


@pytest.fixture
def tree_with_bad_images(tree):
    good = (tree / "train" / "cat" / "cat0.jpg").read_bytes()
    (tree / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tree / "train" / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    (tree / "val" / "dog" / "empty.jpg").write_bytes(b"")
    return tree


@pytest.fixture
def fastai_home(tmp_path, monkeypatch):
    "A fresh fastai config folder (fastai caches its config, so the cache is cleared around the test)."
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai"))
    fastai_cfg.cache_clear()
    yield tmp_path / "fastai"
    fastai_cfg.cache_clear()


KW = dict(presize=32, resize=24, bs=4)


def _class_folders(root, sizes=((48, 40), (30, 60), (100, 50), (64, 64), (40, 90)), classes=("cat", "dog", "owl")):
    "root/<class>/*.jpg, photos of several shapes (none of them squares but one)."
    for c in classes:
        for i, size in enumerate(sizes):
            save_image(root / c / f"{c}{i}.jpg", size=size, seed=hash((c, i)) % 2**32)
    return root


def _ramps(root, sizes=((90, 40), (40, 75), (61, 50))):
    "Smooth photos (a ramp along each axis) of non-square shapes, landscape and portrait, in two classes."
    from PIL import Image

    for c in ("a", "b"):
        for i, (w, h) in enumerate(sizes):
            x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
            arr = np.stack([x, y, np.full_like(x, 90 + 60 * i)], -1).round().astype(np.uint8)
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / c / f"{c}{i}.png")
    return root


def _csv(tmp_path, rows, cols=("name", "label", "is_valid")):
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=list(cols)).to_csv(path, index=False)
    return path


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
                       "folder of images per class"):
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
])
def test_bad_arguments(tree, kw, match):
    args = dict(presize=40, resize=32, bs=4) | kw
    with pytest.raises(ValueError, match=match):
        get_data(tree, **args)


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError, match=r"not a known data set.*imagenette-160"):
        resolve_source("imagenet-160")


@pytest.mark.slow  # starts a subprocess
def test_failed_download_says_how_to_use_a_local_copy(fastai_home, tmp_path):
    # port 9 (discard) on localhost refuses at once: the same path as having no network
    with pytest.raises(DataError, match=r"could not download .*get_data\('/path/to/nosuchset'\)") as e:
        resolve_source("http://127.0.0.1:9/nosuchset.tgz")
    assert f"in $RESNETS_DATA or at {fastai_home / 'data' / 'nosuchset'}" in str(e.value)
    # from the command line, the hint is the command the user ran, with --data; nothing but the error on stderr
    cmd = [sys.executable, "-m", "resnets", "run", "cnn", "--data", "http://127.0.0.1:9/nosuchset.tgz",
           "--epochs", "1"]
    env = {**os.environ, "FASTAI_HOME": str(fastai_home)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "resnets run cnn --epochs 1 --data /path/to/nosuchset" in p.stderr, p.stderr
    assert "\u2588" not in p.stdout + p.stderr, "no stray progress-bar block"
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "RESNETS_DATA_HINT": "make run DATA=/path/to/{folder}"})  # what make sets
    assert "make run DATA=/path/to/nosuchset" in p.stderr, p.stderr


def test_one_lookup_finds_a_local_copy_before_downloading(tmp_path, monkeypatch, imagenette):
    from resnets.sources import data_folders, local_copy

    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "imagenette2-160").symlink_to(imagenette)
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "sets"))
    assert resolve_source("imagenette-160") == tmp_path / "sets" / "imagenette2-160"
    assert data_folders()[0] == tmp_path / "sets"
    assert local_copy("imagenette2-160") == tmp_path / "sets" / "imagenette2-160" and local_copy("nothing") is None
    monkeypatch.delenv("RESNETS_DATA")
    if (data_folders()[-1] / "imagenette2-160").is_dir():  # a checkout beside the project's shared data
        assert resolve_source("imagenette-160") == data_folders()[-1] / "imagenette2-160"


def test_names_and_urls_use_fastais_data_folder_without_network(fastai_home, imagenette, monkeypatch):
    monkeypatch.setattr("resnets.sources.data_folders", lambda: [])  # no local copy: fastai's own folder
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


@pytest.mark.parametrize("fast", [False, True])
def test_a_folder_of_class_folders_gets_a_seeded_split(tmp_path, fast, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = _class_folders(tmp_path / "photos")
    dls = get_data(root, valid_pct=0.4, fast_data=fast, **KW)
    assert list(dls.vocab) == ["cat", "dog", "owl"] and dls.c == 3
    assert (len(dls.train_ds), len(dls.valid_ds)) == (9, 6), "2 of each class's 5 to validation"
    again = get_data(root, valid_pct=0.4, fast_data=fast, **KW)
    assert dls.valid_ds.items == again.valid_ds.items, "the same images in validation with the same seed"
    other = get_data(root, valid_pct=0.4, fast_data=fast, seed=7, **KW)
    assert sorted(other.valid_ds.items) != sorted(dls.valid_ds.items)
    x, y = dls.train.one_batch()
    assert x.shape == (4, 3, 24, 24)


def test_photos_of_any_shape_validate_as_fastais_resize_does(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = _class_folders(tmp_path / "photos")
    stock, fast = (get_data(root, valid_pct=0.4, fast_data=f, **KW) for f in (False, True))
    (xs, ys), (xf, yf) = stock.valid.one_batch(), fast.valid.one_batch()
    assert torch.equal(ys, yf) and xs.shape == xf.shape == (4, 3, 24, 24)
    assert (xs - xf).abs().max() < 1e-4, "centre crop and resize as fastai's Resize, on non-square images too"


def test_the_fast_path_crops_a_training_photo_where_fastais_resize_would(tmp_path, monkeypatch):
    "Non-square photos: at every position along the longer side, the fast path's square is fastai's Resize crop."
    from fastai.vision.all import PILImage, Resize

    from resnets.fastdata import CachedImage, build_cache, build_strips, load_square

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    files = sorted(_ramps(tmp_path / "photos").rglob("*.png"))
    tfm = CachedImage(32, files, build_cache(files, 32), *build_strips(files, 32))
    uncached = CachedImage(32)  # decodes every file on the fly
    for f in files:
        for pct in (0.0, 0.3, 0.5, 0.77, 1.0):
            ref = Resize(32)
            ref.pcts = (pct, pct)
            want = np.asarray(ref.encodes(PILImage.create(f)), dtype=float)
            tfm.pct = pct
            got = tfm.encodes(f).permute(1, 2, 0).numpy().astype(float)
            assert np.abs(got - want).mean() < 2.0 and np.abs(got - want).max() <= 12, (f.name, pct)
            uncached.pct = pct
            assert np.array_equal(uncached.encodes(f).numpy(), got.transpose(2, 0, 1)), "a file not in the cache too"
        tfm.before_call(None, split_idx=1)
        assert np.array_equal(tfm.encodes(f).permute(1, 2, 0).numpy(), load_square(f, 32)), "validation: exact"
    ends = []
    for pct in (0.0, 1.0):
        tfm.pct = pct
        ends.append(tfm.encodes(files[0]).float())
    assert (ends[1][0] - ends[0][0]).mean() > 60, "the two ends of a landscape photo's ramp are far apart"
    (strips,) = [p for p in (tmp_path / "cache").glob("strips-*.npy") if not p.name.endswith("-index.npy")]
    before = np.load(strips)
    strips.unlink()  # a cache cleaned by hand, its index left behind: built again, not an error
    assert np.array_equal(build_strips(files, 32)[0], before)


def test_training_crops_move_every_epoch_as_fastais_do(tmp_path, monkeypatch):
    "Drawn per image and epoch with fastai's distribution: the crop positions of both paths agree (KS test)."
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = _ramps(tmp_path / "photos", sizes=((96, 32),) * 3)  # landscape: the red ramp says where the crop is
    stock, fast = (get_data(root, valid_pct=1 / 3, fast_data=f, presize=32, resize=24, bs=4) for f in (False, True))
    stock_pos, fast_pos = [], []
    for _ in range(150):
        stock_pos.append(stock.train.after_item(stock.train_ds[0])[0][0].float().mean().item())  # Resize: an item tfm
        fast_pos.append(fast.train_ds[0][0][0].float().mean().item())
    stock_pos, fast_pos = np.array(stock_pos), np.array(fast_pos)
    assert len(np.unique(fast_pos.round())) > 30, "a new position each time"
    assert fast_pos.min() < 60 and fast_pos.max() > 190, "from one end of the photo to the other"
    assert ks_statistic(stock_pos, fast_pos) < 0.2, "the same distribution of positions as fastai's"
    valid = {fast.valid_ds[0][0][0].float().mean().item() for _ in range(5)}
    assert len(valid) == 1, "validation: the centre, every time"


@pytest.mark.parametrize("fast", [False, True])
def test_the_noisy_imagenette_csv_with_a_chosen_label_column(imagenette, tmp_path, fast, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    csv = imagenette / "noisy_imagenette.csv"
    df = pd.read_csv(csv)
    dls = get_data(csv, label_col="noisy_labels_5", classes=2, subset=(12, 6), fast_data=fast, **KW)
    table = dict(zip(df.path, df.noisy_labels_5))
    assert all(f.parent.parent.name == "val" for f in dls.valid_ds.items), "is_valid says which"
    assert all(f.parent.parent.name == "train" for f in dls.train_ds.items)
    names = {"n01440764": "tench", "n02102040": "English springer"}
    for f, (_, y) in zip(dls.train_ds.items, dls.train_ds):
        rel = f"{f.parent.parent.name}/{f.parent.name}/{f.name}"
        assert dls.vocab[int(y)] == names.get(table[rel], table[rel]), "the label is the column's, not the folder's"


def test_noisy_labels_differ_from_the_folders(imagenette):
    "The 5 % column really is noisy: the CSV test above reads it, not the folder names."
    if not (imagenette / "noisy_imagenette.csv").exists():
        pytest.skip("no noisy_imagenette.csv")
    df = pd.read_csv(imagenette / "noisy_imagenette.csv")
    folder = df.path.str.split("/").str[1]
    assert 0.03 < (folder != df.noisy_labels_5).mean() < 0.07 and (folder == df.noisy_labels_0).all()


def test_clear_errors_for_own_data(tmp_path):
    root = _class_folders(tmp_path / "photos")
    rows = [(f"photos/{c}/{c}{i}.jpg", c, i == 0) for c in ("cat", "dog") for i in range(3)]
    with pytest.raises(DataError, match=r"2 of 8 files named in .* are missing .*relative to"):
        get_data(_csv(tmp_path, rows + [("photos/cat/nope.jpg", "cat", False), ("x.jpg", "dog", False)]), **KW)
    with pytest.raises(DataError, match=r"no column 'species' in .*: its columns are name, label, is_valid"):
        get_data(_csv(tmp_path, rows), label_col="species", **KW)
    with pytest.raises(DataError, match="validation images but none to train on: owl"):
        get_data(_csv(tmp_path, rows + [("photos/owl/owl0.jpg", "owl", True)]), **KW)
    lonely = _csv(tmp_path, [r[:2] for r in rows] + [("photos/owl/owl0.jpg", "owl")], cols=("name", "label"))
    with pytest.raises(DataError, match="a single image: owl"):
        get_data(lonely, **KW)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(InputError, match="valid_pct must be a fraction between 0 and 1"):
            get_data(root, valid_pct=bad, **KW)
    with pytest.raises(DataError, match="no CSV file at"):
        get_data(tmp_path / "missing.csv", **KW)


def test_holdout_scores_on_training_images_only(imagenette):
    dls = get_data(imagenette, presize=40, resize=32, bs=8, classes=2, subset=(40, 8), holdout=0.25)
    train, valid = dls.train_ds.items, dls.valid_ds.items
    assert all(f.parent.parent.name == "train" for f in train + valid), "val/ untouched"
    assert len(valid) == 20 and len(train) == 60 and not set(train) & set(valid)
    again = get_data(imagenette, presize=40, resize=32, bs=8, classes=2, subset=(40, 8), holdout=0.25, fast_data=True)
    assert sorted(again.valid_ds.items) == sorted(valid), "the same images held out every time, on both paths"


def test_a_renamed_keyword_still_works_with_a_warning(tree):
    "get_data(fast=...) (before fast_data=) gives the same loaders, with a FutureWarning naming the new keyword."
    with pytest.warns(FutureWarning, match="fast= is now fast_data="):
        old = get_data(tree, fast=True, num_workers=0, **KW)
    new, stock = get_data(tree, fast_data=True, num_workers=0, **KW), get_data(tree, num_workers=0, **KW)
    assert type(old.train) is type(new.train) and type(new.train) is not type(stock.train)
    assert list(old.valid_ds.items) == list(new.valid_ds.items)
    with pytest.raises(TypeError, match="pass fast_data= only"):
        get_data(tree, fast=True, fast_data=True, **KW)


def test_every_layout_filters_classes_the_same_way(tmp_path):
    "One class filter for every layout: a folder of class folders takes classes=2 and refuses 0 or 4 as train/val does."
    root = _class_folders(tmp_path / "flat")
    train, valid, table = find_split(root, classes=2, valid_pct=0.4)
    assert {table[f] for f in train + valid} == {"cat", "dog"}
    for n in (0, 4):
        with pytest.raises(DataError, match=r"classes must be between 1 and 3"):
            find_split(root, classes=n)
