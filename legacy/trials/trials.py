"Speedrun trials on a held-out tenth of the training images (val/ untouched): train once, score at several test sizes."
import json
import sys
import time

import resnets
from resnets.data import set_image_size
from resnets.evaluate import flip_tta_accuracy

D = "imagenette-160"  # found by the library's lookup
TRIALS = {
    "T0-chapter-at-64px": dict(size=64, epochs=5, lr=3e-3),
    "T1-label-smoothing": dict(size=64, epochs=5, lr=3e-3, label_smoothing=0.1),
    "T2-lr-6e-3": dict(size=64, epochs=5, lr=6e-3, label_smoothing=0.1),
    "T3-progressive-48-64-6ep": dict(size=64, sizes=(48, 64), epochs=6, lr=6e-3, label_smoothing=0.1),
}
names = sys.argv[1:] or list(TRIALS)
for name in names:
    start = time.perf_counter()
    r = resnets.run("resnet18", data=D, holdout=0.1, fast_data=True, presize=128, out=f"/tmp/trials/{name}",
                    progress=False, **TRIALS[name])
    train_s = time.perf_counter() - start
    learn, row = r.learn, {"trial": name, "settings": TRIALS[name], "resolved": r.settings, "holdout_accuracy": r.accuracy, "run_s": train_s,
                           "history": r.history}
    for ts in (64, 80, 96, 112, 128):
        set_image_size(learn.dls, ts)
        t = time.perf_counter(); acc = float(learn.validate()[1]); t1 = time.perf_counter()
        tta = flip_tta_accuracy(learn); t2 = time.perf_counter()
        row[f"test{ts}"] = {"accuracy": acc, "valid_s": t1 - t, "tta_accuracy": tta, "tta_s": t2 - t1}
    print(json.dumps(row), flush=True)
    with open("/tmp/trials/trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
