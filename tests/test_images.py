"""resnets.images: what the data checks and every pipeline make of unusual image files (faults a trial found: a
16-bit PNG turned white, a decompression bomb called corrupt, a link loop that never ended, an empty class dropped
without a word)."""

import os

import numpy as np
import pytest
import torch
from fastai.vision.all import imagenet_stats
from PIL import Image

from conftest import make_tree
from resnets import InputError, get_data
from resnets.data import find_items
from resnets.images import PIXEL_LIMIT_ENV, ImageTooLarge, check_image, image_files, open_rgb
from resnets.sources import DataError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def _grey16(path, value: int, size=(40, 40)):
    "A 16-bit greyscale PNG (PIL's mode I;16) of one value."
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint16)).save(path)
    return path


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    path = _grey16(tmp_path / "g.png", 32768)  # mid-grey in 16 bits
    with Image.open(path) as im:
        assert im.mode == "I;16" and np.asarray(im.convert("RGB")).mean() > 250, "PIL's own convert clips it"
    assert np.abs(np.asarray(open_rgb(path)).astype(int) - 128).max() <= 1


def test_both_pipelines_and_predict_see_a_16_bit_png_as_grey(tmp_path):
    from resnets.deploy import Predictor
    from resnets.models import create_model

    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    for split in ("train", "val"):
        _grey16(root / split / "cat" / "grey.png", 16384)  # a quarter of the range: 64 in 8 bits
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in imagenet_stats)
    for fast in (False, True):
        dls = get_data(root, presize=32, resize=32, bs=2, fast_data=fast, num_workers=0, device="cpu")
        i = next(i for i, f in enumerate(dls.valid_ds.items) if f.name == "grey.png")
        x = dls.valid.after_batch(dls.valid.do_batch([dls.valid.do_item(i)]))[0].as_subclass(torch.Tensor)
        pixels = (x * std + mean) * 255
        assert pixels.shape[-2:] == (32, 32) and (pixels - 64).abs().max() <= 2, (fast, pixels.mean())
    meta = {"vocab": ["cat", "dog"], "names": {}, "presize": 32, "resize": 32, "stats": imagenet_stats}
    x = Predictor(create_model("cnn", n_out=2), meta).preprocess(root / "val" / "cat" / "grey.png")
    assert ((x * std + mean) * 255 - 64).abs().max() <= 1


def test_an_image_over_the_pixel_limit_is_named_as_such_with_how_to_allow_it(tmp_path, monkeypatch, capsys):
    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)  # 48 x 40 images: 1,920 pixels
    big = root / "train" / "cat" / "big.jpg"
    Image.new("RGB", (120, 100)).save(big)  # 12,000 pixels
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "5000")  # PIL refuses twice its limit: the big one only
    assert check_image(big) == "too large" and check_image(root / "train" / "cat" / "cat0.jpg") is None
    items, _ = find_items(root)
    out = capsys.readouterr().out
    assert big not in items and len(items) == 6
    assert "decompression-bomb limit" in out and f"{PIXEL_LIMIT_ENV}=0" in out and "corrupt" not in out
    with pytest.raises(ImageTooLarge, match=f"decompression-bomb limit.*{PIXEL_LIMIT_ENV}=0"):
        open_rgb(big)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "0")  # allowed: then it is an image like any other
    assert big in find_items(root)[0]
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    with pytest.raises(InputError, match="number of pixels"):
        open_rgb(big)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "5000")
    with pytest.raises(DataError, match="decompression-bomb"):
        find_items(root, bad_images="raise")


def test_a_link_loop_in_the_data_folder_ends_the_walk_with_a_line(tmp_path, capsys):
    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    os.symlink("..", root / "train" / "cat" / "up")  # train/cat/up -> train: a loop
    os.symlink(root / "train" / "dog", root / "train" / "dog-again")  # a second link to one folder
    files = image_files(root / "train")
    assert sorted(f.name for f in files) == ["cat0.jpg", "cat1.jpg", "dog0.jpg", "dog1.jpg"]
    out = capsys.readouterr().out
    assert "not following 2 folder link(s)" in out and "up" in out and "dog" in out
    items, _ = find_items(root)
    assert len(items) == 6


def test_an_empty_class_folder_is_named_not_dropped_silently(tmp_path, capsys):
    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "notes.txt").write_text("no images here")
    items, _ = find_items(root)
    out = capsys.readouterr().out
    assert "1 folder(s) in" in out and "bird" in out and "left out" in out
    assert {f.parent.name for f in items} == {"cat", "dog"}
    flat = tmp_path / "flat"  # a folder of class folders, split by get_data
    for c in ("a", "b"):
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save((flat / c).mkdir(parents=True, exist_ok=True) or
                                                           flat / c / f"{i}.png")
    (flat / "empty").mkdir()
    get_data(flat, presize=8, resize=8, bs=2, num_workers=0)
    assert "empty" in capsys.readouterr().out


def test_a_pipe_named_like_an_image_is_skipped_not_opened(tmp_path, capsys):
    "Found in a trial: a FIFO named x.jpg in train/ hung both pipelines forever (opening it waits for a writer)."
    root = make_tree(tmp_path / "d", n_train=2, n_valid=1)
    os.mkfifo(root / "train" / "cat" / "x.jpg")
    items, _ = find_items(root)  # returns: the pipe is never opened
    assert root / "train" / "cat" / "x.jpg" not in items and len(items) == 6
    out = capsys.readouterr().out
    assert "not regular files" in out and "x.jpg" in out
    for fast in (False, True):
        dls = get_data(root, presize=32, resize=32, bs=2, fast_data=fast, num_workers=0)
        assert len(dls.train_ds) == 4


def test_a_file_name_that_is_not_utf_8_trains_and_predicts_on_both_pipelines(tmp_path, capsys):
    "Found in a trial: a Latin-1 file name crashed the data fingerprint, the cache key and predict --csv."
    from resnets import export, run
    from resnets.cli import main

    root = make_tree(tmp_path / "d", n_train=3, n_valid=1)
    odd = root / "train" / "cat" / os.fsdecode(b"caf\xe9.jpg")  # not UTF-8: Python holds it with a surrogate
    Image.new("RGB", (40, 40), (200, 10, 10)).save(odd)
    for fast in (False, True):
        r = run("cnn", data=root, out=tmp_path / f"r{fast}", size=32, presize=32, bs=2, epochs=1, fast_data=fast,
                progress=False, num_workers=0)
        assert r.finished and r.settings["n_train"] == 7
    model = export(tmp_path / "rTrue")
    assert main(["predict", str(model), str(odd), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert len(rows) == 2 and rows[1].startswith(os.fsencode(odd)), "the file's own bytes: its path opens it"
