# python legacy/trials/testsize4.py [RUN_NAME ...]  (needs trials4.py's runs under $RESNETS_SCRATCH/trials4/, default runs/trials)
"""Held-out probe of round 4's checkpoints (trained on 90 % of train; scored on the held-out tenth): the test size,
each after re-estimating BatchNorm's statistics at that size on 1,024 training images (`recalibrate_bn`, as
`--recalibrate-bn` does). Checkpoints of runs with `--recalibrate-bn` hold the statistics re-estimated at 112 px,
so their 96 px rows are re-estimated too; a run without it (F1) is also scored as trained. Rows are appended to
testsize4.jsonl."""
import json
import os
import sys
from pathlib import Path

from resnets import build
from resnets.checkpoint import load_checkpoint
from resnets.data import set_image_size
from resnets.evaluate import flip_tta_accuracy
from resnets.learner import recalibrate_bn

ROOT = Path(os.environ.get("RESNETS_SCRATCH", "runs/trials")) / "trials4"
for run in [ROOT / n for n in sys.argv[1:]] or sorted(ROOT.iterdir()):
    state = load_checkpoint(run)
    s = state["settings"]
    keep = ("model", "width", "stem", "presize", "size", "sizes", "epochs", "bs", "fast_data", "holdout", "seed")
    learn, exp = build("speedrun10", verbose=False, data=s["data"], **{k: s[k] for k in keep})
    # sizes and re-estimation by hand here: without speedrun10's own callbacks for them (its BatchNormRecalibration
    # would re-estimate before the first validation, "as trained" included)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ in ("ImageSizes", "BatchNormRecalibration")])
    as_trained = [] if s["recalibrate_bn"] else [(96, False)]
    for size, recal in [*as_trained, (96, True), (112, True), (128, True)]:
        learn.model.load_state_dict(state["model"])
        set_image_size(learn.dls, size)
        if recal:
            recalibrate_bn(learn)
        with learn.no_bar(), learn.no_logging():
            acc = learn.validate()[1]
        row = dict(run=run.name, size=size, recalibrated=recal, accuracy=round(float(acc), 4),
                   tta=round(flip_tta_accuracy(learn), 4))
        print(row, flush=True)
        with open(__file__.replace(".py", ".jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
