"""Shared fixtures: where the real data lives, and small generated image folders."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RESNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGENETTE = SHARED_DATA / "imagenette2-160"
MNIST_TINY = SHARED_DATA / "mnist_tiny"

# Tiny settings that still exercise the whole path: 2 real classes, 8 images each, 32 px.
TINY = dict(classes=2, subset=8, size=32, presize=40, bs=8, epochs=1)


# The book's final accuracies of the chapter's five experiments.
BOOK_FINAL = {"cnn": 0.6591, "res_cnn": 0.6678, "double_res_cnn": 0.6927, "resnet18": 0.7572, "resnet50": 0.8726}
# A tiny ResNet-18 (quarter width) on the fast path, and the two classes it is first trained on (tench, springer).
TINY_RESNET = {**TINY, "subset": 6, "model": "resnet18", "width": 0.25, "fast_data": True}
FIRST = ("n01440764", "n02102040")


# The slow tier: a test that trains or predicts on the real images (it asks for one of these fixtures) is marked
# slow here, as is one marked by hand (a subprocess, a notebook); `make test` leaves them out, `make test-all` runs
# every tier. A `gpu` test is skipped here when there is no CUDA GPU.
REAL_DATA_FIXTURES = {"imagenette", "mnist_tiny"}


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def imagenette() -> Path:
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"real Imagenette not found at {IMAGENETTE} (set RESNETS_SHARED_DATA to its parent folder)")
    return IMAGENETTE


@pytest.fixture(scope="session")
def mnist_tiny() -> Path:
    if not (MNIST_TINY / "train").is_dir():
        pytest.skip(f"MNIST_TINY not found at {MNIST_TINY} (set RESNETS_SHARED_DATA to its parent folder)")
    return MNIST_TINY


# Trained tiny runs shared by the tests that only read them (a test that changes one copies it first).
@pytest.fixture(scope="session")
def tiny_cnn_run(imagenette, tmp_path_factory):
    "Experiment 1 at the TINY settings, finished: its Results (folder, history, learner)."
    from resnets import run

    return run("cnn", data=imagenette, out=tmp_path_factory.mktemp("tiny") / "cnn", progress=False, num_workers=0,
               **TINY)


@pytest.fixture(scope="session")
def tiny_resnet(imagenette, tmp_path_factory):
    "The run folder of a tiny ResNet trained on two classes (FIRST): what fine-tuning and interpretation start from."
    from resnets import run

    folder = tmp_path_factory.mktemp("tiny") / "resnet18"
    run("resnet18", data=imagenette, out=folder, progress=False, **{**TINY_RESNET, "classes": FIRST})
    return folder


@pytest.fixture(scope="session")
def generated_run(tmp_path_factory):
    """A finished 2-epoch run of experiment 1 on generated images (32 px, two classes): the quick tier's trained
    run, for the modules that read one (export, evaluate, checkpoint). Nothing to learn: its numbers are chance."""
    from resnets import run

    data = make_tree(tmp_path_factory.mktemp("generated") / "data", n_train=8, n_valid=4)
    return run("cnn", data=data, out=tmp_path_factory.mktemp("generated") / "run", size=32, presize=40, bs=4,
               epochs=2, progress=False, num_workers=0, seed=0)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    "Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."
    z = np.sort(np.concatenate([a, b]))
    cdf = lambda v: np.searchsorted(np.sort(v), z, side="right") / len(v)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def curve(r) -> list[tuple]:
    "A run's per-epoch (train loss, valid loss, accuracy)."
    return [(h["train_loss"], h["valid_loss"], h["accuracy"]) for h in r.history]


def save_image(path: Path, mode: str = "RGB", size=(48, 40), fmt: str | None = None, seed: int = 0) -> Path:
    "A random image of `mode` (RGB, L, CMYK, RGBA, ...) saved at `path`."
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "CMYK": 4, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    img.save(path, format=fmt)
    return path


def make_tree(root: Path, classes=("cat", "dog"), n_train: int = 6, n_valid: int = 3, valid_name: str = "val") -> Path:
    "train/<class>/*.jpg and <valid_name>/<class>/*.jpg with random RGB content."
    for split, n in (("train", n_train), (valid_name, n_valid)):
        for c in classes:
            for i in range(n):
                save_image(root / split / c / f"{c}{i}.jpg", seed=hash((split, c, i)) % 2**32)
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "data")
