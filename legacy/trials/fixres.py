# python legacy/trials/fixres.py  (needs /tmp/trials2/P1-...: run trials2.py P1-half-width-64-80-96-12ep first)
"""Held-out probe (P1's checkpoint, trained on 90 % of train; scored on the held-out tenth): test size, with and
without re-estimating BatchNorm statistics at that size on 1,024 training images (validation preprocessing)."""
import json

import torch
from torch import nn

from resnets import build
from resnets.checkpoint import load_checkpoint
from resnets.data import set_image_size
from resnets.evaluate import flip_tta_accuracy

run = "/tmp/trials2/P1-half-width-64-80-96-12ep"
state = load_checkpoint(run)
s = state["settings"]
opts = dict(model="resnet18", width=0.5, data=s["data"], presize=128, size=96, sizes=(64, 80, 96), epochs=12, lr=6e-3,
            label_smoothing=0.1, fast_data=True, holdout=0.1, seed=42)
learn, exp = build("speedrun", verbose=False, **opts)
learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ImageSizes"])  # sizes set here by hand
trained = {k: v.clone() for k, v in state["model"].items()}
train_items = list(learn.dls.train_ds.items)
g = torch.Generator().manual_seed(0)
calib = [train_items[i] for i in torch.randperm(len(train_items), generator=g)[:1024].tolist()]

def recalibrate(size):
    bns = [m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats(); m.momentum = None  # a cumulative average over the calibration batches
    dl = learn.dls.test_dl(calib, bs=128)
    set_image_size(learn.dls, size)
    learn.model.train()
    with torch.no_grad():
        for (xb,) in dl:
            learn.model(xb)
    learn.model.eval()
    for m in bns:
        m.momentum = 0.1

rows = []
for size in (96, 112, 128):
    for recal in (False, True):
        learn.model.load_state_dict(trained)
        if recal:
            recalibrate(size)
        set_image_size(learn.dls, size)
        with learn.no_bar(), learn.no_logging():
            acc = learn.validate()[1]
        tta = flip_tta_accuracy(learn)
        rows.append(dict(size=size, recalibrated=recal, accuracy=round(float(acc), 4), tta=round(tta, 4)))
        print(rows[-1], flush=True)
json.dump(rows, open(__file__.replace(".py", ".json"), "w"), indent=1)
