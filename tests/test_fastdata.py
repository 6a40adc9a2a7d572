"""The fast data path: the cache is built once and invalidated by changes; the batched augmentation is correct."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, make_tree
from resnets import get_data, run
from resnets.fastdata import BatchAugment, build_cache


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_is_built_once_and_rebuilt_when_the_data_change(tmp_path, cache, capsys):
    root = make_tree(tmp_path / "d", n_train=3, n_valid=2)
    files = sorted(root.rglob("*.jpg"))
    arr = build_cache(files, 24)
    assert arr.shape == (len(files), 24, 24, 3) and arr.dtype == np.uint8
    assert "decoding 10 images" in capsys.readouterr().out
    (path,) = cache.glob("*.npy")
    assert np.array_equal(build_cache(files, 24), arr) and "decoding" not in capsys.readouterr().out
    assert list(cache.glob("*.npy")) == [path], "reused, not rebuilt"
    from PIL import Image

    Image.new("RGB", (30, 30), (255, 0, 0)).save(files[0])  # the data change: a new cache, with the new pixels
    os.utime(files[0], ns=(1, 1))
    new = build_cache(files, 24)
    assert len(list(cache.glob("*.npy"))) == 2
    assert np.abs(new[0].astype(int) - [255, 0, 0]).max() <= 3  # red, give or take JPEG
    assert not list(cache.glob("*.tmp")), "no half-built cache left behind"


def test_grid_is_torchs_affine_grid_and_a_flip_mirrors():
    aug = BatchAugment(16)
    theta = aug.random_theta(4, "cpu")
    torch.testing.assert_close(aug._grid(theta), F.affine_grid(theta, (4, 3, 16, 16), align_corners=False))
    x = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    x[..., :, 8:] = 255  # right half white
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
    out = F.grid_sample(x.float(), aug._grid(flip), align_corners=False)
    assert (out[..., :8] == 255).all() and (out[..., 8:] == 0).all()


def test_random_crops_stay_inside_the_image_and_flip_half_the_time():
    aug = BatchAugment(32, max_rotate=0, max_zoom=1.0)
    theta = aug.random_theta(4000, "cpu")
    w, h, cx, cy = theta[:, 0, 0].abs(), theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    assert (cx.abs() + w <= 1 + 1e-6).all() and (cy.abs() + h <= 1 + 1e-6).all()
    assert ((w * h) >= 0.5 - 1e-6).all(), "at least min_scale of the area"
    assert 0.45 < (theta[:, 0, 0] < 0).float().mean() < 0.55
    assert (BatchAugment(32, flip=False).random_theta(500, "cpu")[:, 0, 0] > 0).all()


def test_validation_is_the_whole_image_resized_and_normalised():
    aug = BatchAugment(16)
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    want = F.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(aug(x, train=False), (want - aug.mean) / aug.std)
    out = aug(x, train=True)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32


def test_fast_loaders_match_the_chapters(imagenette):
    kw = dict(presize=40, resize=32, bs=8, classes=2, subset=8)
    stock, fast = get_data(imagenette, **kw), get_data(imagenette, fast=True, **kw)
    assert list(fast.vocab) == list(stock.vocab) and fast.c == stock.c == 2
    assert (len(fast.train_ds), len(fast.valid_ds), len(fast.train), len(fast.valid)) == (16, 16, 2, 2)
    x, y = fast.train.one_batch()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    labels = torch.cat([yb for _, yb in fast.valid])  # not shuffled: sorted files, class by class
    assert labels.tolist() == [0] * 8 + [1] * 8


def test_an_experiment_trains_on_the_fast_path(imagenette, tmp_path):
    r = run("res_cnn", data=imagenette, out=tmp_path / "r", fast_data=True, progress=False, **TINY)
    assert r.finished and r.settings["fast_data"] is True and r.history[0]["train_loss"] > 0


def test_the_fast_path_trains_channels_last(imagenette):
    from resnets.experiments import build

    kw = dict(data=imagenette, size=32, presize=40, bs=8, classes=2, subset=8, verbose=False)
    learn, _ = build("res_cnn", fast_data=True, **kw)
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    stock, _ = build("res_cnn", fast_data=False, **kw)  # the chapter's pipeline keeps the default layout
    conv = next(m for m in stock.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
