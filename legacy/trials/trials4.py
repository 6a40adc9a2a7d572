"""Speedrun trials, round 4 (`speedrun10`): every setting chosen on the held-out tenth of the training images.

    python legacy/trials/trials4.py [TRIAL ...]

Each trial is `speedrun10-v3` (the recipe when this round began) with the settings named, run as one `resnets.run` from the call's start: wall time includes loading the
cache, training, scoring the held-out images, BatchNorm re-estimation and flip TTA. Rows are appended to
trials4.jsonl beside this script."""
import sys

from trialrun import run_trials

TRIALS = {
    "V3-speedrun10": {},
    "B64-batch-64": dict(bs=64),
    "R1-B64+ranger+flat-cos": dict(bs=64, opt="ranger", schedule="flat_cos"),
    "L2-B64+light-augment": dict(bs=64, augment="light"),
    "F1-B64-tested-at-96": dict(bs=64, test_size=96, recalibrate_bn=False),
}
run_trials("speedrun10-v3", TRIALS, "trials4.jsonl", sys.argv[1:])
