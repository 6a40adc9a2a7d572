"""The loop of the round-4 and later trial scripts: each trial is one `resnets.run` of a registered recipe version on
the held-out tenth of the training images (seed 42), timed from the call's start, and a row appended to a .jsonl
file: the settings the trial changed, and every setting the run resolved to (`resolved`, from its results.json).

The images are found by the library's lookup ($RESNETS_DATA, ../shared/data, fastai's folder); the trial runs go
under $RESNETS_SCRATCH (default runs/trials)."""
import json
import os
import time
from pathlib import Path

import resnets

DATA = "imagenette-160"
SCRATCH = Path(os.environ.get("RESNETS_SCRATCH", "runs/trials"))
RESULTS = Path(__file__).resolve().parents[2] / "results" / "speedrun-trials"


def run_trials(recipe: str, trials: dict[str, dict], jsonl: str, names: list[str]) -> None:
    """Run `trials` (all, or those in `names`): `recipe` (a frozen version, as it stood when the round began) with
    each trial's own settings, into SCRATCH/<jsonl's stem>/<trial>; rows go to RESULTS/<jsonl>."""
    folder = SCRATCH / Path(jsonl).stem
    for name in names or list(trials):
        start = time.perf_counter()
        r = resnets.run(recipe, data=DATA, out=f"{folder}/{name}", progress=False, holdout=0.1, seed=42,
                        **trials[name])
        wall = time.perf_counter() - start
        row = {"trial": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in trials[name].items()},
               "resolved": r.settings, "holdout_accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy, "wall_s": round(wall, 1),
               "epochs": [(h["epoch"], None if h["accuracy"] is None else round(h["accuracy"], 4), round(h["time"], 1))
                          for h in r.history]}
        print(json.dumps(row), flush=True)
        with open(RESULTS / jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
