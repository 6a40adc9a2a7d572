"""Choosing fine-tuning's settings without the validation set: the other 5 classes' training images only.

150 training images of each of the other 5 classes, of which a fixed two thirds (100 a class, seed 0) are held
out to score on and 50 a class train, as in finetune.py. Fine-tuned from finetune.py's first-5-classes run with
fastai's lr_mult (the body learns at the head's rate / lr_mult) at 100 (fastai's default), 10 and 1, against from
scratch. Rows are appended to tune.jsonl beside this script.

    python scripts/finetune/tune.py [DATA]
"""
import json
import sys
import time
from pathlib import Path

import resnets
from resnets.data import IMAGENETTE_NAMES

D = sys.argv[1] if len(sys.argv) > 1 else "imagenette-160"  # the library's lookup
HERE, RECIPE, SEED = (Path(__file__).resolve().parents[2] / "results" / "finetune"), "speedrun", 42
OTHER = tuple(sorted(IMAGENETTE_NAMES)[5:])
HELD = dict(classes=OTHER, subset=(150, 1), holdout=2 / 3, bs=32, seed=SEED)  # 50 train, 100 held out, a class
ARMS = {"scratch": dict(epochs=9), **{f"lr_mult {m}": dict(init=str(HERE / "first-5-classes"), freeze_epochs=1,
                                                           epochs=8, lr_mult=m) for m in (100, 10, 1)}}
for name, kw in ARMS.items():
    start = time.perf_counter()
    r = resnets.run(RECIPE, data=D, out=f"/tmp/finetune-tune/{name.replace(' ', '-')}", progress=False, **HELD, **kw)
    row = {"arm": name, "settings": kw, "resolved": r.settings, "n_train": r.settings["n_train"],
           "n_heldout": r.settings["n_valid"], "heldout_accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy,
           "wall_s": round(time.perf_counter() - start, 1), "per_epoch": [round(h["accuracy"], 4) for h in r.history]}
    print(json.dumps(row), flush=True)
    with open(HERE / "tune.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
