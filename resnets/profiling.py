"""Where a training step's time goes in the library's own fastai loop: the batch's wait, its augmentation, forward,
backward, the optimiser and the callbacks, for each data pipeline (`resnets bench profile`, the suite's profile)."""

from __future__ import annotations

import time
from functools import partial

from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import find_bs

from .errors import InputError
from .timing import sync
from .training import build

__all__ = ["STAGES", "profile_training", "format_profile"]

STAGES = ("data", "augmentation", "forward", "backward", "optimiser", "callbacks")
_EVENTS = ("before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step",
           "after_step", "after_batch")


def _timed(kind: type) -> type:
    "A loader's batch transforms' type (a fastai Pipeline) whose calls add their time to `self.clock['augmentation']`."

    def __call__(self, o):
        start = time.perf_counter()
        out = kind.__call__(self, o)
        sync()
        self.clock["augmentation"] += time.perf_counter() - start
        return out

    return type(f"Timed{kind.__name__}", (kind,), {"__call__": __call__})


class _Edge(Callback):
    """Stamps the time at each training event, before every other callback (`first`) or after all of them; the
    last edge turns one batch's stamps into its stages and ends the fit after `warmup + batches` batches."""

    def __init__(self, clock: dict, first: bool, warmup: int = 0, batches: int = 0):
        self.clock, self.first, self.warmup, self.batches, self.order = clock, first, warmup, batches, \
            -(10**6) if first else 10**6
        for event in _EVENTS:
            setattr(self, event, partial(self._stamp, event))

    def _stamp(self, event):
        if not self.training:
            return
        sync()
        self.clock[event, self.first] = now = time.perf_counter()
        if self.first or event != "after_batch":
            return
        t = self.clock
        since = t.pop("end", None)  # the last batch's end: the first batch's wait is not a step's
        aug, t["augmentation"] = t["augmentation"], 0.0
        if since is not None and self.iter >= self.warmup:
            stages = {"data": t["before_batch", True] - since - aug, "augmentation": aug,
                      "forward": t["after_pred", True] - t["before_batch", False]
                      + t["after_loss", True] - t["after_pred", False],
                      "backward": t["after_backward", True] - t["before_backward", False],
                      "optimiser": t["after_step", True] - t["before_step", False]
                      + t["after_batch", True] - t["after_step", False]}  # opt.zero_grad, after the step's events
            stages["callbacks"] = now - since - sum(stages.values())
            for k, v in stages.items():
                t["total"][k] += v
            t["images"] += find_bs(self.learn.yb)
        t["end"] = now
        if self.iter + 1 >= self.warmup + self.batches:
            raise CancelFitException()


def profile_training(experiment: str, data, batches: int = 20, warmup: int = 2, **kw) -> dict:
    """Where a training step's time goes in the experiment's own fastai loop, for each pipeline: waiting for the
    batch (loading, or the cache's gather), its augmentation (the loader's batch transforms), forward + loss,
    backward, the optimiser (step and zero_grad), and the callbacks (every event's, fastai's own included).

    Times `batches` steps (fewer if the epoch is shorter) of the experiment's Learner (`build`: its model, loss,
    optimiser, precision and callbacks) under `fit_one_cycle`, after `warmup` untimed ones."""
    out = {"experiment": experiment, "batches": batches}
    for fast in (False, True):
        learn, exp = build(experiment, data=data, fast_data=fast, verbose=False, **kw)
        dl = learn.dls.train
        if len(dl) <= warmup:
            raise InputError(f"{len(dl)} training batches leave none to time after {warmup} warm-up ones: "
                             "use more data or a smaller batch size")
        batches = out["batches"] = min(batches, len(dl) - warmup)
        clock = {"augmentation": 0.0, "images": 0, "total": dict.fromkeys(STAGES, 0.0)}
        pipe, kind = dl.after_batch, type(dl.after_batch)
        pipe.__class__, pipe.clock = _timed(kind), clock
        try:
            with learn.no_logging(), learn.no_bar():
                learn.fit_one_cycle(1, exp.lr, cbs=[_Edge(clock, True), _Edge(clock, False, warmup, batches)])
        finally:
            pipe.__class__ = kind
            del pipe.clock
        total = sum(clock["total"].values())
        out["fast" if fast else "stock"] = {"images_per_s": clock["images"] / total, "precision": learn.precision,
                                            **{f"{k}_fraction": v / total for k, v in clock["total"].items()}}
    return out


def format_profile(p: dict) -> str:
    "The profile as a small table: the share of a training step each stage takes, per pipeline."
    lines = [f"where a training step's time goes ({p['experiment']}, {p['batches']} batches, fastai's loop):",
             f"{'pipeline':<10}{'prec':>5}{'images/s':>10}" + "".join(f"{k:>{len(k) + 2}}" for k in STAGES)]
    for key in ("stock", "fast"):
        r = p[key]
        lines.append(f"{key:<10}{r['precision']:>5}{r['images_per_s']:>10.1f}"
                     + "".join(f"{r[f'{k}_fraction']:>{len(k) + 2}.0%}" for k in STAGES))
    return "\n".join(lines)
