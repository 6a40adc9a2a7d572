"""Speedrun trials, round 2: every setting chosen on a held-out tenth of the training images (val/ untouched).

Each trial is one `resnets.run` from the command's start: wall time includes loading the cache, training,
scoring the held-out images and flip TTA. Rows are appended to trials2.jsonl beside this script."""
import json
import sys
import time
from pathlib import Path

t_import = time.perf_counter()
import resnets  # noqa: E402

D = "imagenette-160"  # found by the library's lookup
BASE = dict(model="resnet18", presize=128, fast_data=True, tta=True, holdout=0.1)
TRIALS = {
    "S1-half-width-64px-8ep": dict(width=0.5, size=64, epochs=8, lr=3e-3),
    "S2-S1+lr6e-3+ls0.1": dict(width=0.5, size=64, epochs=8, lr=6e-3, label_smoothing=0.1),
    "S3-S2+progressive-48-64-10ep": dict(width=0.5, sizes=(48, 56, 64), epochs=10, lr=6e-3, label_smoothing=0.1),
    "S4-S3-in-8ep": dict(width=0.5, sizes=(48, 56, 64), epochs=8, lr=6e-3, label_smoothing=0.1),
    "A1-half-width-64px-5ep": dict(width=0.5, size=64, epochs=5, lr=3e-3),
    "S5-S3-with-resnet10": dict(model="resnet10", width=0.5, sizes=(48, 56, 64), epochs=10, lr=6e-3,
                                label_smoothing=0.1),
    "S6-S3-with-presize-80": dict(width=0.5, presize=80, sizes=(48, 56, 64), epochs=10, lr=6e-3, label_smoothing=0.1),
    "S7-S5-from-40px": dict(model="resnet10", width=0.5, sizes=(40, 48, 56, 64), epochs=10, lr=6e-3,
                            label_smoothing=0.1),
    "S8-S7-in-9ep": dict(model="resnet10", width=0.5, sizes=(40, 48, 56, 64), epochs=9, lr=6e-3,
                         label_smoothing=0.1),
    "E1-S8+ema0.99": dict(model="resnet10", width=0.5, sizes=(40, 48, 56, 64), epochs=9, lr=6e-3,
                          label_smoothing=0.1, ema=0.99),
    "E2-S8+ema0.98": dict(model="resnet10", width=0.5, sizes=(40, 48, 56, 64), epochs=9, lr=6e-3,
                          label_smoothing=0.1, ema=0.98),
    "B1-P1-bs256-lr1.2e-2-11ep": dict(width=0.5, presize=128, sizes=(64, 80, 96), epochs=11, lr=1.2e-2, bs=256,
                                      label_smoothing=0.1),
    "P1-half-width-64-80-96-12ep": dict(width=0.5, presize=128, sizes=(64, 80, 96), epochs=12, lr=6e-3,
                                        label_smoothing=0.1),
}
out = (Path(__file__).resolve().parents[2] / "results" / "speedrun-trials") / "trials2.jsonl"
for name in sys.argv[1:] or list(TRIALS):
    settings = {**BASE, **TRIALS[name]}
    start = time.perf_counter()
    r = resnets.run("speedrun-v1", data=D, out=f"/tmp/trials2/{name}", progress=False, **settings)
    wall = time.perf_counter() - start
    row = {"trial": name, "settings": TRIALS[name], "resolved": r.settings, "holdout_accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy,
           "wall_s": round(wall, 1), "epochs": [(h["epoch"], round(h["accuracy"], 4), round(h["elapsed"], 1))
                                                for h in r.history]}
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
