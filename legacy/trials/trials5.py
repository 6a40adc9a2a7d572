"""Speedrun trials, round 5 (`speedrun`): every setting chosen on the held-out tenth of the training images.

    python legacy/trials/trials5.py [TRIAL ...]

Each trial is `speedrun-v1` (trial S8) with the settings named, run as one `resnets.run` from the
call's start: wall time includes loading the cache, training, scoring the held-out images and flip TTA. Rows are
appended to trials5.jsonl beside this script."""
import sys

from trialrun import run_trials

TRIALS = {
    "S9-batch-64+valid-last-2": dict(bs=64, valid_last=2),
    "S10-S9-in-8ep": dict(bs=64, valid_last=2, epochs=8),
}
run_trials("speedrun-v1", TRIALS, "trials5.jsonl", sys.argv[1:])
