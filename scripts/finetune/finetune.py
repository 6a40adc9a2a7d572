"""Does fine-tuning from an earlier run pay? Imagenette's first 5 classes train a network; the other 5 classes,
with 50 training images each, are then learnt twice: fine-tuned from it (`init`, fastai's fine_tune), and
trained from scratch with the same recipe, images, batch size and number of epochs. Both are scored on all the
validation images of those 5 classes. Writes finetune.json beside this script. Fine-tuning's lr_mult (1: the body
learns at the head's rate) was chosen with tune.py on held-out training images, never on these validation images;
the first run also kept fastai's default (100), recorded as well. A finished first-5-classes run is reused.

    python scripts/finetune/finetune.py [DATA]
"""
import json
import shutil
import sys
import time
from pathlib import Path

import resnets
from resnets.data import IMAGENETTE_NAMES

D = sys.argv[1] if len(sys.argv) > 1 else "imagenette-160"  # the library's lookup
HERE, RECIPE, SEED = (Path(__file__).resolve().parents[2] / "results" / "finetune"), "speedrun", 42
ids = sorted(IMAGENETTE_NAMES)
FIRST, OTHER = tuple(ids[:5]), tuple(ids[5:])
SMALL = dict(classes=OTHER, subset=(50, 1000), bs=32, epochs=8, seed=SEED)  # 50 training images a class


def timed(name, **kw):
    if name == "first-5-classes" and (HERE / name / "results.json").exists() and \
            (done := resnets.load_results(HERE / name)).finished:
        return done, json.loads((HERE / "finetune.json").read_text())["runs"][0]["wall_s"]  # the base, timed before
    shutil.rmtree(HERE / name, ignore_errors=True)  # every other run is trained again
    start = time.perf_counter()
    r = resnets.run(RECIPE, data=D, out=HERE / name, progress=False, **kw)
    return r, time.perf_counter() - start


rows = {}
base, t = timed("first-5-classes", classes=FIRST, seed=SEED)
rows["first 5 classes, all their training images"] = (base, t)
for mult in (100, 1):
    ft, t = timed(f"other-5-fine-tuned-lr_mult-{mult}", init=str(HERE / "first-5-classes"), freeze_epochs=1,
                  lr_mult=mult, **SMALL)
    rows[f"other 5 classes, 50 images each: fine-tuned from it, lr_mult {mult}"] = (ft, t)
scratch, t = timed("other-5-from-scratch", **{**SMALL, "epochs": SMALL["epochs"] + 1})
rows["other 5 classes, 50 images each: from scratch (same epochs)"] = (scratch, t)
out = {"recipe": RECIPE, "seed": SEED, "first": [IMAGENETTE_NAMES[c] for c in FIRST],
       "other": [IMAGENETTE_NAMES[c] for c in OTHER], "versions": base.versions, "device": base.device,
       "runs": [{"run": k, "n_train": r.settings["n_train"], "n_valid": r.settings["n_valid"],
                 "epochs": len(r.history), "accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy,
                 "wall_s": round(t, 1), "folder": r.folder} for k, (r, t) in rows.items()]}
(HERE / "finetune.json").write_text(json.dumps(out, indent=1))
for row in out["runs"]:
    print(f"{row['run']:<62} {row['n_train']:>5} train {row['n_valid']:>5} valid  {row['accuracy']:.4f} "
          f"(TTA {row['tta_accuracy']})  {row['wall_s']:.0f} s")
