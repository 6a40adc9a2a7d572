"""The loop of the round-4 and later trial scripts: each trial is one `resnets.run` of a registered recipe on the
held-out tenth of the training images (seed 42), timed from the call's start, and a row appended to a .jsonl file."""
import json
import time
from pathlib import Path

import resnets

DATA = "../shared/data/imagenette2-160"


def run_trials(recipe: str, base: dict, trials: dict[str, dict], jsonl: Path, folder: str, names: list[str]) -> None:
    """Run `trials` (all, or those in `names`): `recipe` with `base` (the recipe as it stood when the round began),
    then each trial's own settings, which its row records."""
    for name in names or list(trials):
        start = time.perf_counter()
        r = resnets.run(recipe, data=DATA, out=f"{folder}/{name}", progress=False, holdout=0.1, seed=42,
                        **{**base, **trials[name]})
        wall = time.perf_counter() - start
        row = {"trial": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in trials[name].items()},
               "holdout_accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy, "wall_s": round(wall, 1),
               "epochs": [(h["epoch"], None if h["accuracy"] is None else round(h["accuracy"], 4), round(h["time"], 1))
                          for h in r.history]}  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
