"""The fast data path: fastai's own DataLoaders, a cache built once and invalidated by changes, and the chapter's
augmentation (the same distributions as fastai's aug_transforms, the same validation tensors)."""

import math
import os

import numpy as np
import pytest
import torch
from fastai.torch_core import TensorImage
from fastai.vision.all import imagenet_stats

from conftest import TINY, ks_statistic, make_tree, save_image
from resnets import get_data, run
from resnets.config import AUGMENT_KW
from resnets.fastdata import ChapterAugment, build_cache


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pipelines(presize=80, size=64, augment="chapter"):
    "The chapter's batch transforms (fastai's own) and the fast path's, on the training split, on the CPU."
    from fastai.vision.all import IntToFloatTensor, Normalize, Pipeline, aug_transforms, imagenet_stats

    norm = lambda: Normalize.from_stats(*imagenet_stats, cuda=False)  # noqa: E731
    kw = AUGMENT_KW[augment]
    chapter = Pipeline([IntToFloatTensor(), *aug_transforms(min_scale=0.5, size=size, **kw), norm()], split_idx=0)
    fast = Pipeline([IntToFloatTensor(), ChapterAugment(size, **kw), norm()], split_idx=0)
    return chapter, fast


def _draws(pipe, calls: int, n: int = 250, presize: int = 80) -> np.ndarray:
    """Per output image: brightness, contrast, flip and rotation, read back from a probe image whose red channel
    is a horizontal ramp and whose green and blue channels are constant (64 and 128): lighting acts on both
    constants, so each image's brightness b and contrast c follow from them, and undoing the lighting leaves
    the ramp, whose gradient gives the flip (its sign) and the rotation (its angle)."""
    ramp = torch.linspace(32, 224, presize).round().expand(presize, presize)
    probe = torch.stack([ramp, torch.full_like(ramp, 64), torch.full_like(ramp, 128)]).to(torch.uint8)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in imagenet_stats)
    logit = lambda v: torch.logit(v, eps=1e-6)  # noqa: E731
    rows = []
    for _ in range(calls):
        y = pipe(TensorImage(probe.expand(n, -1, -1, -1).clone())).as_subclass(torch.Tensor) * std + mean
        g, b = logit(y[:, 1].mean((1, 2))), logit(y[:, 2].mean((1, 2)))
        c = (g - b) / (math.log(64 / 191) - math.log(128 / 127))  # logit(64/255) - logit(128/255)
        shift = b / c - math.log(128 / 127)
        ramp_out = torch.sigmoid(logit(y[:, 0]) / c[:, None, None] - shift[:, None, None])
        dx = (ramp_out[..., 1:] - ramp_out[..., :-1]).mean((1, 2))
        dy = (ramp_out[:, 1:] - ramp_out[:, :-1]).mean((1, 2))
        rows.append(torch.stack([torch.sigmoid(shift), c, dx.sign(), torch.rad2deg(torch.atan2(dy, dx.abs()))], 1))
    return torch.cat(rows).numpy().round(3)  # rounded: "no change" is an atom at 0.5 / 1 / 0 in both


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


def test_fast_augmentation_draws_what_the_chapters_draws():
    "2,000 images through fastai's aug_transforms(min_scale=0.5) and through ChapterAugment: the same distributions."
    chapter, fast = _pipelines()
    torch.manual_seed(0)
    a = _draws(chapter, 8)
    torch.manual_seed(1)
    b = _draws(fast, 8)
    # KS critical value for 2,000 vs 2,000 at the 0.1 % level is 0.062; the seeds are fixed, so this is repeatable
    for i, what in enumerate(["brightness", "contrast", "flip", "rotation"]):
        assert ks_statistic(a[:, i], b[:, i]) < 0.062, what
    # and the ranges themselves (the old fast path's linear lighting reached 0.32-0.68 for a mid-grey pixel)
    for col in (a, b):
        assert 0.4 <= col[:, 0].min() and col[:, 0].max() <= 0.6 and 0.7 < (col[:, 0] != 0.5).mean() < 0.8
        assert 0.8 <= col[:, 1].min() and col[:, 1].max() <= 1.25 and 0.7 < (col[:, 1] != 1).mean() < 0.8
        assert 0.45 < (col[:, 2] < 0).mean() < 0.55, "flips half the images"
        assert np.abs(col[:, 3]).max() < 15 and 0.5 < (np.abs(col[:, 3]) > 0.5).mean() < 0.9


def test_fast_zoom_draws_what_fastais_zoom_draws():
    """Each image's zoom (and its centre) as fastai's Zoom(max_zoom=1.1, p=0.75) draws it: a quarter of the images
    unzoomed, the rest scaled by 1/U(1, 1.1) (read back from the affine map's determinant: |det| = s^2)."""
    from fastai.vision.augment import zoom_mat

    n = 4000
    torch.manual_seed(0)
    theirs = zoom_mat(torch.zeros(n, 3, 8, 8), max_zoom=1.1, p=0.75)
    torch.manual_seed(1)
    ours = ChapterAugment(64).affine(n, 80, 80, "cpu")
    s_theirs, s_ours = theirs[:, 0, 0].numpy(), ours[:, :2, :2].det().abs().sqrt().numpy()
    assert ks_statistic(s_theirs.round(4), s_ours.round(4)) < 0.05  # (critical value at 0.1 %, 4,000 vs 4,000: 0.044)
    for s in (s_theirs, s_ours):
        assert 0.2 < np.isclose(s, 1).mean() < 0.3 and s.min() >= 1 / 1.1 - 1e-6
    shift = lambda m: m[:, :2, 2].norm(dim=1).numpy()  # noqa: E731  (the zoom's centre; rotation keeps its length)
    assert ks_statistic(shift(theirs).round(4), shift(ours).round(4)) < 0.05


def test_light_augmentation_is_the_crop_and_the_flip_only():
    "augment='light' on both pipelines: half the images flipped, none rotated, brightened or contrasted."
    chapter, fast = _pipelines(augment="light")
    assert [type(t).__name__ for t in chapter.fs] == ["IntToFloatTensor", "Flip", "RandomResizedCropGPU", "Normalize"]
    for seed, pipe in enumerate((chapter, fast)):
        torch.manual_seed(seed)
        d = _draws(pipe, 4)
        assert (d[:, 0] == 0.5).all() and (d[:, 1] == 1).all(), "no lighting"
        assert 0.45 < (d[:, 2] < 0).mean() < 0.55, "flips half the images"
        assert np.abs(d[:, 3]).max() < 0.5, "no rotation"


def test_fast_crops_are_the_chapters_square_crops():
    "fastai's RandomResizedCropGPU(min_scale=0.5, ratio=(1, 1)) draws one square per batch: so does ChapterAugment."
    from fastai.vision.all import RandomResizedCropGPU

    rrc, aug, x = RandomResizedCropGPU(64, min_scale=0.5, ratio=(1, 1)), ChapterAugment(64), torch.zeros(1, 3, 160, 160)
    theirs = []
    for _ in range(4000):
        rrc.before_call(x, 0)
        theirs.append((*rrc.cp_size, *rrc.tl))
    theirs = np.array(theirs)
    assert (theirs[:, 0] == theirs[:, 1]).all(), "square"
    torch.manual_seed(0)
    crops = torch.stack([aug.crop(160, 160) for _ in range(4000)])
    assert torch.equal(crops[:, 0, 0], crops[:, 1, 1]), "square"
    side = (crops[:, 0, 0] * 159 + 1).round().numpy()
    assert ks_statistic(theirs[:, 0], side) < 0.05 and side.min() >= round(math.sqrt(0.5) * 160) and side.max() <= 160
    left = ((crops[:, 0, 2].numpy() + 1) * 159 - side + 1) / 2  # back from the normalised centre to the top-left pixel
    assert (left.round() >= 0).all() and (left.round() + side <= 160).all(), "inside the image"
    assert abs(float(np.corrcoef(left, side)[0, 1])) < 0.9 and left.std() > 3, "positions drawn, not centred"


def test_fast_validation_tensors_are_the_chapters_on_generated_images(tmp_path):
    """The quick tier's check of the same: landscape and portrait noise images (every pixel differs from its
    neighbours, so another filter than fastai's bilinear, or a crop off the centre, is far from 1e-4)."""
    root = make_tree(tmp_path / "wide", n_train=2, n_valid=3)
    for i in range(3):
        save_image(root / "val" / "cat" / f"tall{i}.jpg", size=(36, 52), seed=100 + i)
    for presize, size in ((24, 16), (32, 32), (48, 40)):  # smaller, and larger, than the images' shorter sides
        kw = dict(presize=presize, resize=size, bs=2)
        stock, fast = get_data(root, **kw), get_data(root, fast_data=True, **kw)
        (xs, ys), (xf, yf) = ([torch.cat(t) for t in zip(*dls.valid)] for dls in (stock, fast))
        assert xs.shape == xf.shape == (9, 3, size, size) and torch.equal(ys, yf)
        assert (xs - xf).abs().max() < 1e-4


def test_fast_validation_tensors_are_the_chapters(imagenette):
    "The same validation images through fastai's pipeline and the fast path: equal to 1e-4 (normalised units)."
    for presize, size in ((40, 32), (160, 128)):
        kw = dict(presize=presize, resize=size, bs=16, classes=2, subset=8)
        stock, fast = get_data(imagenette, **kw), get_data(imagenette, fast_data=True, **kw)
        (xs, ys), (xf, yf) = stock.valid.one_batch(), fast.valid.one_batch()
        assert xs.shape == xf.shape == (16, 3, size, size) and torch.equal(ys, yf)
        assert (xs - xf).abs().max() < 1e-4


def test_fast_loaders_match_the_chapters(imagenette):
    from fastai.data.core import TfmdDL

    kw = dict(presize=40, resize=32, bs=8, classes=2, subset=8)
    stock, fast = get_data(imagenette, **kw), get_data(imagenette, fast_data=True, **kw)
    assert isinstance(fast.train, TfmdDL) and isinstance(fast.valid, TfmdDL), "fastai's own DataLoaders"
    assert list(fast.vocab) == list(stock.vocab) and fast.c == stock.c == 2
    assert (len(fast.train_ds), len(fast.valid_ds), len(fast.train), len(fast.valid)) == (16, 16, 2, 2)
    x, y = fast.train.one_batch()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    labels = torch.cat([yb for _, yb in fast.valid])  # not shuffled: sorted files, class by class
    assert labels.tolist() == torch.cat([yb for _, yb in stock.valid]).tolist()
    assert sorted(labels.tolist()) == [0] * 8 + [1] * 8
    assert list(fast.vocab) == ["English springer", "tench"], "readable names, sorted"


def test_an_image_one_folder_deeper_is_skipped_as_the_chapter_does(tmp_path):
    root = make_tree(tmp_path / "d", n_train=4, n_valid=2)
    save_image(root / "train" / "cat" / "extra" / "x.jpg")
    kw = dict(presize=24, resize=16, bs=4)
    stock, fast = get_data(root, **kw), get_data(root, fast_data=True, **kw)
    assert (len(fast.train_ds), len(fast.valid_ds)) == (len(stock.train_ds), len(stock.valid_ds)) == (8, 4)
    assert list(fast.vocab) == list(stock.vocab) == ["cat", "dog"]
    fast.train.one_batch()


def test_an_experiment_trains_on_the_fast_path(imagenette, tmp_path):
    r = run("res_cnn", data=imagenette, out=tmp_path / "r", fast_data=True, progress=False, **TINY)
    assert r.finished and r.settings["fast_data"] is True and r.history[0]["train_loss"] > 0


def test_every_path_trains_channels_last(imagenette):
    "Both pipelines, and get_learner from Python (it was the fast path's alone; a ResNet-50 step 1.37x at 224 px)."
    from resnets import create_model, get_data, get_learner
    from resnets.training import build

    kw = dict(data=imagenette, size=32, presize=40, bs=8, classes=2, subset=8, verbose=False)
    for fast in (True, False):
        learn, _ = build("res_cnn", fast_data=fast, **kw)
        conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    dls = get_data(imagenette, presize=40, resize=32, bs=8, classes=2, subset=8)
    learn = get_learner(dls, create_model("res_cnn", n_out=2), verbose=False)
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = get_learner(dls, create_model("res_cnn", n_out=2), verbose=False, channels_last=False)
    assert next(m for m in plain.model.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()


def test_the_fast_path_takes_its_workers_and_pins_batches_for_a_gpu(tmp_path, monkeypatch):
    "--num-workers reached the chapter's pipeline only (the fast path forced 0); for a GPU its batches are pinned."
    from fastai.data.core import Datasets

    import resnets.fastdata as fastdata

    root = make_tree(tmp_path / "d", n_train=4, n_valid=3)
    kw = dict(presize=40, resize=32, bs=2, fast_data=True)
    none, two = get_data(root, **kw), get_data(root, num_workers=2, **kw)
    assert (none.train.fake_l.num_workers, two.train.fake_l.num_workers) == (0, 2)  # (fastai keeps them there)
    assert torch.equal(torch.cat([x for x, _ in none.valid]), torch.cat([x for x, _ in two.valid]))
    seen, real = [], Datasets.dataloaders

    def spy(self, **k):
        seen.append((k["num_workers"], k["pin_memory"]))
        return real(self, **{**k, "pin_memory": False})  # (no GPU here to pin for)

    monkeypatch.setattr(Datasets, "dataloaders", spy)
    get_data(root, **kw)
    monkeypatch.setattr(fastdata, "default_device", lambda: torch.device("cuda"))
    get_data(root, **kw)
    assert seen[0] == (0, False) and seen[1][1] is True and seen[1][0] >= 1


def test_a_batch_gathered_from_the_cache_is_the_per_item_batch(tmp_path):
    """CachedDL reads a batch at once: the same tensors, types and random draws as fastai's per-item path, on
    landscape, portrait and square training images (the crop position drawn per non-square image, in order), on
    validation, and on test sets (unlabelled, or of files the cache does not hold: the per-item way)."""
    import random

    from fastai.data.core import TfmdDL

    from resnets.fastdata import CachedDL

    root = make_tree(tmp_path / "d", n_train=5, n_valid=3)  # 48x40 landscape images
    for i in range(3):
        save_image(root / "train" / "cat" / f"tall{i}.jpg", size=(36, 52), seed=200 + i)
        save_image(root / "train" / "dog" / f"square{i}.jpg", size=(44, 44), seed=300 + i)
    dls = get_data(root, presize=32, resize=24, bs=4, fast_data=True)
    extra = [save_image(tmp_path / "new" / f"n{i}.jpg", seed=400 + i) for i in range(5)]
    loaders = [dls.train, dls.valid, dls.test_dl(extra), dls.test_dl(sorted(root.rglob("val/*/*.jpg")))]
    assert all(isinstance(dl, CachedDL) for dl in loaders)
    assert [dl._cached() is not None for dl in loaders] == [True, True, False, False]
    for dl in loaders:
        batches, idxs = {}, list(dl.get_idxs())  # (shuffled for training)
        for way in ("gathered", "per item"):
            random.seed(7)
            torch.manual_seed(7)
            make = dl.create_batches if way == "gathered" else (lambda s, dl=dl: TfmdDL.create_batches(dl, s))
            batches[way] = list(make(idxs))
            batches[way + " draws"] = random.random()  # as many numbers drawn before this one
        assert len(batches["gathered"]) == len(dl) and batches["gathered draws"] == batches["per item draws"]
        for a, b in zip(batches["gathered"], batches["per item"]):
            assert [type(t) for t in a] == [type(t) for t in b] and len(a) == len(b)
            assert all(torch.equal(s, t) and s.dtype == t.dtype for s, t in zip(a, b))
    xb, _ = next(iter(dls.train))  # and through the loader's whole pipeline: augmented floats
    assert xb.shape == (4, 3, 24, 24) and xb.dtype == torch.float32
