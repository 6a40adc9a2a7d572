"""Speedrun trials, round 7 (issue 38: `speedrun10` towards 88 % in 10 minutes): every setting chosen on the
held-out tenth of the training images.

    python legacy/trials/trials7.py [TRIAL ...]

Each trial is `speedrun10-v5` (the recipe as the round began: 20 epochs, 85.6 % on val/ in 6.5 minutes) with the
settings named, one `resnets.run` on the held-out tenth, seed 42. These trials ran beside experiment 5 (their wall
times are not a quiet machine's: the time an epoch takes alone comes from v5's timed runs). Rows go to trials7.jsonl."""
import sys

from trialrun import run_trials

TRIALS = {
    "V5": dict(),  # the paired baseline
    # the epochs that 10 minutes buy at v5's speed (20 epochs in 375-409 s on val/, alone): where more epochs lead
    "V5-30ep": dict(epochs=30),
}
run_trials("speedrun10-v5", TRIALS, "trials7.jsonl", sys.argv[1:])
