"""Your own images: a folder of class folders (a seeded split), a CSV of labels, photos of any shape, clear errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import IMAGENETTE, save_image
from resnets import DataError, InputError, get_data

KW = dict(presize=32, resize=24, bs=4)


def _class_folders(root, sizes=((48, 40), (30, 60), (100, 50), (64, 64), (40, 90)), classes=("cat", "dog", "owl")):
    "root/<class>/*.jpg, photos of several shapes (none of them squares but one)."
    for c in classes:
        for i, size in enumerate(sizes):
            save_image(root / c / f"{c}{i}.jpg", size=size, seed=hash((c, i)) % 2**32)
    return root


@pytest.mark.parametrize("fast", [False, True])
def test_a_folder_of_class_folders_gets_a_seeded_split(tmp_path, fast, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = _class_folders(tmp_path / "photos")
    dls = get_data(root, valid_pct=0.4, fast=fast, **KW)
    assert list(dls.vocab) == ["cat", "dog", "owl"] and dls.c == 3
    assert (len(dls.train_ds), len(dls.valid_ds)) == (9, 6), "2 of each class's 5 to validation"
    again = get_data(root, valid_pct=0.4, fast=fast, **KW)
    assert dls.valid_ds.items == again.valid_ds.items, "the same images in validation with the same seed"
    other = get_data(root, valid_pct=0.4, fast=fast, seed=7, **KW)
    assert sorted(other.valid_ds.items) != sorted(dls.valid_ds.items)
    x, y = dls.train.one_batch()
    assert x.shape == (4, 3, 24, 24)


def test_photos_of_any_shape_validate_as_fastais_resize_does(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = _class_folders(tmp_path / "photos")
    stock, fast = (get_data(root, valid_pct=0.4, fast=f, **KW) for f in (False, True))
    (xs, ys), (xf, yf) = stock.valid.one_batch(), fast.valid.one_batch()
    assert torch.equal(ys, yf) and xs.shape == xf.shape == (4, 3, 24, 24)
    assert (xs - xf).abs().max() < 1e-4, "centre crop and resize as fastai's Resize, on non-square images too"


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
    stock, fast = (get_data(root, valid_pct=1 / 3, fast=f, presize=32, resize=24, bs=4) for f in (False, True))
    stock_pos, fast_pos = [], []
    for _ in range(150):
        stock_pos.append(stock.train.after_item(stock.train_ds[0])[0][0].float().mean().item())  # Resize: an item tfm
        fast_pos.append(fast.train_ds[0][0][0].float().mean().item())
    stock_pos, fast_pos = np.array(stock_pos), np.array(fast_pos)
    assert len(np.unique(fast_pos.round())) > 30, "a new position each time"
    assert fast_pos.min() < 60 and fast_pos.max() > 190, "from one end of the photo to the other"
    assert _ks(stock_pos, fast_pos) < 0.2, "the same distribution of positions as fastai's"
    valid = {fast.valid_ds[0][0][0].float().mean().item() for _ in range(5)}
    assert len(valid) == 1, "validation: the centre, every time"


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    z = np.sort(np.concatenate([a, b]))
    cdf = lambda v: np.searchsorted(np.sort(v), z, side="right") / len(v)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("fast", [False, True])
def test_the_noisy_imagenette_csv_with_a_chosen_label_column(imagenette, tmp_path, fast, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    csv = imagenette / "noisy_imagenette.csv"
    df = pd.read_csv(csv)
    dls = get_data(csv, label_col="noisy_labels_5", classes=2, subset=(12, 6), fast=fast, **KW)
    table = dict(zip(df.path, df.noisy_labels_5))
    assert all(f.parent.parent.name == "val" for f in dls.valid_ds.items), "is_valid says which"
    assert all(f.parent.parent.name == "train" for f in dls.train_ds.items)
    names = {"n01440764": "tench", "n02102040": "English springer"}
    for f, (_, y) in zip(dls.train_ds.items, dls.train_ds):
        rel = f"{f.parent.parent.name}/{f.parent.name}/{f.name}"
        assert dls.vocab[int(y)] == names.get(table[rel], table[rel]), "the label is the column's, not the folder's"


def test_noisy_labels_differ_from_the_folders():
    "The 5 % column really is noisy: the CSV test above reads it, not the folder names."
    if not (IMAGENETTE / "noisy_imagenette.csv").exists():
        pytest.skip("no noisy_imagenette.csv")
    df = pd.read_csv(IMAGENETTE / "noisy_imagenette.csv")
    folder = df.path.str.split("/").str[1]
    assert 0.03 < (folder != df.noisy_labels_5).mean() < 0.07 and (folder == df.noisy_labels_0).all()


def _csv(tmp_path, rows, cols=("name", "label", "is_valid")):
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=list(cols)).to_csv(path, index=False)
    return path


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
