"Score T0's final weights on the held-out tenth at several test sizes, with and without flip TTA."
import json
import time

import resnets
from resnets.checkpoint import load_checkpoint
from resnets.evaluate import flip_tta_accuracy

state = load_checkpoint("/tmp/trials/T0-chapter-at-64px")
rows = []
for ts in (64, 80, 96, 112, 128):
    learn, exp = resnets.build("resnet18", data="imagenette-160", holdout=0.1, fast_data=True,
                               presize=128, size=64, test_size=ts, verbose=False)
    learn.model.load_state_dict(state["model"])
    t = time.perf_counter()
    with learn.no_bar():
        loss, acc, top5 = learn.validate()
    t1 = time.perf_counter()
    tta = flip_tta_accuracy(learn)
    rows.append({"test_size": ts, "accuracy": float(acc), "valid_s": t1 - t, "tta_accuracy": tta,
                 "tta_s": time.perf_counter() - t1, "n": len(learn.dls.valid_ds)})
    print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open("/tmp/trials/T0-testsizes.json", "w"), indent=1)
