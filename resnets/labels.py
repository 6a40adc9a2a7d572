"""Class labels: a file's class from its folder or from a table, with Imagenette's WordNet ids as readable names."""

from __future__ import annotations

from pathlib import Path

from fastai.data.transforms import parent_label

__all__ = ["IMAGENETTE_NAMES", "class_label", "table_label"]

# Human-readable names of Imagenette's WordNet ids, for plots and predictions.
IMAGENETTE_NAMES: dict[str, str] = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}


def class_label(f: Path | str) -> str:  # the annotation matters: fastai's transforms dispatch on it
    "A file's class: the name of its folder, with Imagenette's WordNet ids as readable names (n01440764: tench)."
    name = parent_label(f)
    return IMAGENETTE_NAMES.get(name, name)


def table_label(f: Path | str, table: dict) -> str:
    "A file's class from a table of labels (a CSV's label column), Imagenette's ids as readable names."
    name = table[Path(f)]
    return IMAGENETTE_NAMES.get(name, name)
