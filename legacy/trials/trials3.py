"""Speedrun trials, round 3 (`speedrun10`): every setting chosen on the held-out tenth of the training images.

Each trial is `speedrun10-v2` (as registered at the start of this round) with the settings named, run as one
`resnets.run` from the call's start: wall time includes loading the cache, training, scoring the held-out images,
BatchNorm re-estimation and flip TTA. Rows are appended to trials3.jsonl beside this script."""
import json
import sys
import time
from pathlib import Path

import resnets

D = "imagenette-160"  # found by the library's lookup
TRIALS = {
    "V2-speedrun10": {},
    "L1-light-augment": dict(augment="light"),
    "T1-two-conv-stem": dict(stem=(32, 64)),
    "T2-T1+light+12ep": dict(stem=(32, 64), augment="light", epochs=12),
    "T3-T2-in-11ep": dict(stem=(32, 64), augment="light", epochs=11),
}
out = (Path(__file__).resolve().parents[2] / "results" / "speedrun-trials") / "trials3.jsonl"
for name in sys.argv[1:] or list(TRIALS):
    start = time.perf_counter()
    r = resnets.run("speedrun10-v2", data=D, out=f"/tmp/trials3/{name}", progress=False, holdout=0.1, seed=42,
                    **TRIALS[name])
    wall = time.perf_counter() - start
    row = {"trial": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in TRIALS[name].items()},
           "resolved": r.settings, "holdout_accuracy": r.accuracy, "tta_accuracy": r.tta_accuracy, "wall_s": round(wall, 1),
           "epochs": [(h["epoch"], round(h["accuracy"], 4), round(h["time"], 1)) for h in r.history]}
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
