"""What a person hands a trained learner: a path, a str, a PIL image, a tensor, bytes; and a phone's photo, stored
sideways with an EXIF orientation. Every path reads them alike: both pipelines, their caches, `learn.predict`,
`test_dl`, `show_results`, an exported learner, `resnets predict` and the ONNX preprocessing."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from fastai.learner import load_learner
from fastai.torch_core import TensorImage
from fastai.vision.core import PILImage
from PIL import Image

from conftest import make_tree
from resnets import create_model, get_data, get_learner
from resnets.decode import build_strips, load_square
from resnets.deploy import Predictor
from resnets.images import image_size, open_rgb

PATHS = {"chapter": False, "fast": True}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    yield
    plt.close("all")


def _learner(root, fast: bool):
    dls = get_data(root, presize=40, resize=32, bs=4, fast_data=fast, num_workers=0, device="cpu")
    return get_learner(dls, create_model("cnn", n_out=dls.c), precision="fp32", verbose=False)


def _inputs(f):
    "One image file as each kind of input fastai's PILImage.create takes."
    with Image.open(f) as im:
        arr = np.array(im.convert("RGB"))
    return {"Path": f, "str": str(f), "PILImage": PILImage.create(f), "PIL lazy": Image.open(f),
            "TensorImage": TensorImage(torch.from_numpy(arr).permute(2, 0, 1)),
            "tensor": torch.from_numpy(arr), "array": arr, "bytes": f.read_bytes()}


@pytest.mark.parametrize("path", PATHS)
def test_predict_test_dl_and_show_results_take_every_kind_of_input(tree, tmp_path, path):
    learn = _learner(tree, PATHS[path])
    f = learn.dls.valid_ds.items[0]
    label, idx, probs = learn.predict(f)
    learn.export(tmp_path / "export.pkl")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "load_learner` uses Python's insecure pickle")
        loaded = load_learner(tmp_path / "export.pkl")
    for who, lrn in (("learner", learn), ("load_learner", loaded)):
        for kind, x in _inputs(f).items():
            label2, idx2, probs2 = lrn.predict(x)
            assert label2 == label, (who, kind)
            torch.testing.assert_close(probs2, probs, atol=1e-5, rtol=1e-4, msg=f"{who}, {kind}")
        items = list(_inputs(f).values())
        dl = lrn.dls.test_dl(items, num_workers=0)
        preds, _ = lrn.get_preds(dl=dl)
        assert preds.shape == (len(items), lrn.dls.c) and torch.allclose(preds, probs.expand_as(preds), atol=1e-5)
    plt.close("all")
    # show_results needs labels (fastai 2.8's show_results of an unlabelled test_dl fails in its own dispatch)
    learn.show_results(dl=learn.dls.test_dl([f, str(f)], with_labels=True, num_workers=0), max_n=2)
    shown = [ax.get_title() for n in plt.get_fignums() for ax in plt.figure(n).axes if ax.get_title()]
    assert len(shown) == 2 and all(t.split("\n")[0] == learn.dls.vocab[0] for t in shown), shown


def _phone_photo(folder, name="portrait.png", size=(60, 40), seed=0):
    """An upright portrait image (h > w), and the same stored as a phone stores it: the pixels turned sideways
    (landscape) with EXIF Orientation 6 saying how to turn them back. PNG, so that the pixels compare exactly."""
    rng = np.random.default_rng(seed)
    upright = Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8))  # 40 wide, 60 high
    folder.mkdir(parents=True, exist_ok=True)
    upright.save(folder / f"upright-{name}")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # Orientation 6: turn 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / name, exif=exif)
    return folder / name, folder / f"upright-{name}", upright


def test_an_exif_orientation_is_honoured_when_an_image_is_read(tmp_path):
    f, _, upright = _phone_photo(tmp_path)
    with Image.open(f) as im:
        assert im.size == (60, 40), "stored sideways"
    assert image_size(f) == (40, 60)
    assert np.array_equal(np.asarray(open_rgb(f)), np.asarray(upright))
    assert np.array_equal(load_square(f, 32), load_square(upright, 32))
    with Image.open(f) as im:
        assert np.array_equal(load_square(im, 32), load_square(upright, 32)), "a PIL image, as opened"
    # a PIL image already turned (exif_transpose drops the tag) is not turned twice
    from PIL import ImageOps

    with Image.open(f) as im:
        assert np.array_equal(np.asarray(open_rgb(f)), np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


@pytest.mark.parametrize("path", PATHS)
def test_a_sideways_photo_with_its_orientation_is_seen_upright_on_every_path(tmp_path, path):
    "Both pipelines (and the fast path's cache), learn.predict, an exported model file and its ONNX preprocessing."
    root = make_tree(tmp_path / "d", n_train=4, n_valid=2)
    f, up, _ = _phone_photo(root / "val" / "cat")
    learn = _learner(root, PATHS[path])
    assert {f, up} <= set(learn.dls.valid_ds.items)  # so the fast path reads both from its cache
    x_f, x_up = learn.dls.test_dl([f, up], num_workers=0).one_batch()[0]  # as validation reads them
    torch.testing.assert_close(x_f, x_up, msg="the validation batch")
    torch.testing.assert_close(learn.predict(f)[2], learn.predict(up)[2])
    with Image.open(f) as im:
        rotated = learn.predict(np.array(im))[2]  # its pixels as stored, without the EXIF
    assert not torch.allclose(rotated, learn.predict(up)[2], atol=1e-6), "the check can tell the two apart"
    meta = {"vocab": list(learn.dls.vocab), "names": {c: c for c in learn.dls.vocab}, "presize": 40, "resize": 32,
            "stats": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}
    predictor = Predictor(create_model("cnn", n_out=2), meta)  # resnets predict's, and the ONNX export's preprocessing
    torch.testing.assert_close(predictor.preprocess(f), predictor.preprocess(up))
    torch.testing.assert_close(predictor.preprocess(str(f)), predictor.preprocess(Image.open(up)))


def test_the_fast_path_crops_a_sideways_photo_as_the_portrait_it_is(tmp_path):
    "The strips cache (non-square images, whole) stores the upright image: portrait, 40 wide, so its long side is 60."
    f, up, _ = _phone_photo(tmp_path / "imgs")
    arr, index = build_strips([f, up], 20, folder=tmp_path / "cache")
    (i0, s0, n0, p0), (i1, s1, n1, p1) = index.tolist()
    assert (n0, p0) == (n1, p1) == (30, 1), "portrait, its longer side 60 * 20 / 40"
    assert np.array_equal(arr[s0 : s0 + n0], arr[s1 : s1 + n1])
