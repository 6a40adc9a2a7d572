"""An Imagenette-shaped folder of synthetic JPEGs, for timing where the real images cannot go.

    python -m resnets.synthetic OUT [--train 947] [--valid 393] [--size 160]

Ten class folders named like Imagenette's, `train/` and `val/`, smooth random colour images (JPEG
quality 75, so decoding costs about what a photo does). Speed figures only: nothing to learn here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import IMAGENETTE_NAMES

__all__ = ["make_synthetic"]


def make_synthetic(out, n_train: int = 947, n_valid: int = 393, size: int = 160, seed: int = 0) -> Path:
    "Write out/{train,val}/<wnid>/*.JPEG: n_train and n_valid images per class (Imagenette's ~9.5k + 3.9k)."
    out, rng = Path(out), np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_valid)):
        for wnid in IMAGENETTE_NAMES:
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
                img.save(folder / f"{wnid}_{i}.JPEG", quality=75)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=947, help="images per class in train/")
    p.add_argument("--valid", type=int, default=393, help="images per class in val/")
    p.add_argument("--size", type=int, default=160)
    a = p.parse_args()
    print(f"wrote {make_synthetic(a.out, a.train, a.valid, a.size)}")
