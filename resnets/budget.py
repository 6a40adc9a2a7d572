"""Fitting a run to a time budget: each training size of the schedule and the validation timed on this machine,
then as many epochs as fit (`--budget 10m`)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import torch

from .config import Experiment
from .data import set_image_size
from .errors import InputError
from .evaluate import RECALIBRATION_IMAGES, on_data_device
from .precision import device_autocast
from .timing import step_stages

__all__ = ["plan_budget"]


def _time_steps(learn, size: int, steps: int = 3) -> float:
    """Seconds per training step at `size`, data loading and augmentation included: a copy of the model (the run's
    own is not touched), timed on real batches by `timing.step_stages`."""
    set_image_size(learn.dls, size)
    model = copy.deepcopy(on_data_device(learn))  # (not yet moved by a fit: the batches are on the data's device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # the step's cost, not fastai's bookkeeping
    warmup = 1 if len(learn.dls.train) > 1 else 0
    steps = max(1, min(steps, len(learn.dls.train) - warmup))
    stages, _ = step_stages(model, opt, torch.nn.functional.cross_entropy, learn.dls.train, steps, warmup,
                            cast=lambda: device_autocast(learn))
    return sum(stages.values()) / steps


@torch.no_grad()
def _time_validation(learn, size: int, batches: int = 2) -> float:
    "Seconds for a whole validation pass at `size`, from the first few batches."
    set_image_size(learn.dls, size)
    model, it, n, start = on_data_device(learn).eval(), iter(learn.dls.valid), 0, time.perf_counter()
    with device_autocast(learn):
        for _ in range(min(batches, len(learn.dls.valid))):
            xb, _ = next(it)
            model(xb.as_subclass(torch.Tensor))
            n += len(xb)
    del it
    return (time.perf_counter() - start) / max(n, 1) * len(learn.dls.valid_ds)


def plan_budget(learn, exp: Experiment, spent: float) -> tuple[Experiment, dict]:
    """The experiment with as many epochs as fit in `exp.budget` seconds, given `spent` already: each training size
    of the schedule and the validation are timed here, on this machine; the schedule (one-cycle or flat-cosine) then
    spans the epochs that fit."""
    start = time.perf_counter()
    n_batches = len(learn.dls.train)
    sizes = sorted(set(exp.sizes or (exp.size,)))
    step = {sz: _time_steps(learn, sz) for sz in sizes}
    valid = _time_validation(learn, exp.valid_size) * 1.1  # metrics and bookkeeping on top of the forward passes
    set_image_size(learn.dls, exp.train_size(0))
    overhead = 0.5  # per epoch: results.json, checkpoint, plot
    final = valid + 2.0  # flip TTA's mirrored pass, or the interpretation's pass (TTA's is reused); plots
    if exp.recalibrate_bn:  # a forward pass over (at most) 1,024 training images before the last validation
        final += valid * min(RECALIBRATION_IMAGES, len(learn.dls.train_ds)) / max(len(learn.dls.valid_ds), 1)

    # fine-tuning (init, pretrained) trains fastai's fine_tune: `freeze_epochs` of the head alone first (timed as
    # whole epochs: a frozen body still runs forward, and its backward is cut short; an upper bound), then `epochs`
    fits = (exp.freeze_epochs,) if exp.fine_tunes and exp.freeze_epochs else ()

    def fit_s(epochs: int) -> float:
        train = sum(step[exp.train_size(e, epochs)] * n_batches for e in range(epochs))
        return train + epochs * overhead + min(epochs, exp.valid_last or epochs) * valid

    def predicted(epochs: int) -> float:
        return sum(fit_s(n) for n in (*fits, epochs)) + final

    left = exp.budget - spent - (time.perf_counter() - start)
    epochs = 0
    while predicted(epochs + 1) <= left:
        epochs += 1
    least = spent + (time.perf_counter() - start) + predicted(1)
    if epochs == 0:
        raise InputError(f"a budget of {exp.budget:.0f} s is too small for one epoch of {exp.name} here: set-up took "
                         f"{spent:.0f} s and one epoch takes about {predicted(1):.0f} s, so at least "
                         f"--budget {math.ceil(least)}")
    plan = {"budget": exp.budget, "epochs": epochs, "predicted_s": spent + (time.perf_counter() - start) +
            predicted(epochs), "step_s": {str(k): v for k, v in step.items()}, "valid_s": valid}
    return replace(exp, epochs=epochs), plan
