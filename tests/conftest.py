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
