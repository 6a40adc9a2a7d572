"""Speedrun trials, round 6 (issue 38: `speedrun` in 60 s): every setting chosen on the held-out tenth of the
training images.

    python legacy/trials/trials6.py [TRIAL ...]

Each trial is `speedrun-v2` (the recipe as the round began) with the settings named, run as one `resnets.run` from
the call's start, experiment 5 paused (SIGSTOP) so the machine is otherwise idle. Rows go to trials6.jsonl."""
import sys

from trialrun import run_trials

TRIALS = {
    "V2": dict(),  # the paired baseline, timed with this round's code
    "P80": dict(presize=80),  # the cache at 80 px: less to decode, gather and convert for 40-64 px training
    # on P80 (adopted: +0.4 points held out, -0.6 with TTA, both within the noise of 947 images, for 14 % less
    # training time). A rule fixed before these ran: adopt a change that saves time if it costs at most half a
    # point of held-out TTA accuracy, or one that adds at least half a point at no time cost.
    "P80-LS2": dict(presize=80, label_smoothing=0.2),
    "P80-LA": dict(presize=80, augment="light"),
    "P80-T2": dict(presize=80, stem=(32, 64)),  # speedrun10's two-conv stem
    # after the fast path gathered whole batches (CachedDL, the same batches bit for bit): P80 again, then in 8 epochs
    "P80-gather": dict(presize=80),
    "P80-E8": dict(presize=80, epochs=8),
}
run_trials("speedrun-v2", TRIALS, "trials6.jsonl", sys.argv[1:])
