"""Scoring a trained model: flip test-time augmentation, BatchNorm re-estimation, and what it gets wrong.

  flip_tta(learn)        validation accuracy with each image's and its mirror image's probabilities averaged
  recalibrate_bn(learn)  BatchNorm's running statistics re-estimated on training images as validation sees them
                         (torch's `update_bn`), for scoring at a size or preprocessing unlike training's

And fastai's `ClassificationInterpretation`, drawn into a run's folder:

  confusion_matrix.png  actual class (rows) against predicted class (columns), on the validation images
                        (up to CONFUSION_LIMIT classes; beyond, a cell per pair would not be read, nor fit in memory)
  most_confused.png     beyond CONFUSION_LIMIT classes: the most-confused pairs, and every class's accuracy sorted
  top_losses.png        the validation images the model is most confidently wrong about (fastai's grid:
                        predicted / actual / loss / probability of the actual class)
  per-class accuracy    the share of each class's validation images predicted right, in results.json

`interpret(learn, folder)` does this after every complete one-process run that saves a folder, from one pass over
the validation set; `resnets interpret RUN_DIR` redraws it from a run's checkpoint (resnets.training.interpret_run).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from fastai.callback import fp16
from fastai.interpret import ClassificationInterpretation
from fastcore.foundation import L
from torch.optim.swa_utils import update_bn

from .learner import unwrap
from .precision import MixedPrecision, device_autocast
from .results import save_figure

__all__ = ["CONFUSION_LIMIT", "RECALIBRATION_IMAGES", "on_data_device", "flip_tta",
           "flip_tta_accuracy", "shared_predictions", "one_process", "recalibrate_bn",
           "Interpretation", "interpret"]

CONFUSION_LIMIT = 30  # classes up to which the confusion matrix is drawn cell by cell (0.6 inch a class)
RECALIBRATION_IMAGES = 1024  # training images `recalibrate_bn` re-estimates BatchNorm on (and plan_budget counts)


@torch.no_grad()
def on_data_device(learn) -> torch.nn.Module:
    """The Learner's model, moved to its data's device first. fastai moves it there only in a fit's `before_fit`:
    code that runs the model outside a fit, before any (the budget's timing, TTA or BatchNorm re-estimation called
    directly), would feed CUDA batches to a model still on the CPU."""
    device = getattr(learn.dls, "device", None)
    return learn.model.to(device) if device is not None else learn.model


def _predict(learn, dl, plain: bool = True, mirror: bool = True):
    "Over `dl`: the plain images' logits (if `plain`), their mirrors' probabilities (if `mirror`), and the targets."
    model, flipped, logits, targs = on_data_device(learn).eval(), [], [], []
    for xb, yb in dl:
        x = xb.as_subclass(torch.Tensor)
        with device_autocast(learn):  # per batch, as fastai's loop: autocast's weight casts are not kept across
            if plain:  # batches then, and on a CPU they change bf16's last bits (kernels per memory layout)
                logits.append(model(x).float().cpu())
            if mirror:
                flipped.append(model(x.flip(-1)).float().softmax(1).cpu())
        targs.append(yb.as_subclass(torch.Tensor).cpu())
    cat = lambda ts: torch.cat(ts) if ts else None  # noqa: E731
    return cat(logits), cat(flipped), torch.cat(targs) if targs else torch.empty(0, dtype=torch.long)


def _tta_accuracy(logits: torch.Tensor, mirrored: torch.Tensor, targs: torch.Tensor) -> float:
    return ((logits.softmax(1) + mirrored).argmax(1) == targs).float().mean().item() if len(targs) else 0.0


def flip_tta(learn, plain: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Validation accuracy with each image's and its mirror image's class probabilities averaged; and the plain
    images' logits and targets, in the validation set's order (what the interpretation plots need). `plain`: those
    logits and targets from the model as it is now (the last validation's, `callbacks.LastValidPreds`): only the
    mirrored images are predicted then."""
    if plain is not None and len(plain[0]) != len(learn.dls.valid_ds):  # e.g. one rank's share of a distributed run
        plain = None
    logits, mirrored, targs = _predict(learn, learn.dls.valid, plain=plain is None)
    if not len(targs):
        return 0.0, torch.empty(0), targs
    if plain is not None and not torch.equal(plain[1], targs):
        raise RuntimeError("the kept validation predictions are not of the validation images in order")
    logits = plain[0] if plain is not None else logits
    return _tta_accuracy(logits, mirrored, targs), logits, targs


def shared_predictions(learn, mirror: bool) -> tuple[float | None, torch.Tensor, torch.Tensor] | None:
    """In a data-parallel run, after training: every rank predicts every `world`-th validation image (and its mirror,
    for flip TTA, if `mirror`), rank 0 gathers them back into the validation set's order and gets (TTA accuracy or
    None, logits, targets); the other ranks get None. Every rank must call it."""
    import torch.distributed as dist
    from fastai.torch_core import num_distrib, rank_distrib

    rank, world = rank_distrib(), num_distrib()
    items = list(learn.dls.valid_ds.items)
    mine = items[rank::world]
    part = _predict(learn, learn.dls.test_dl(mine, with_labels=True), mirror=mirror) if mine else None
    parts = [None] * world
    dist.all_gather_object(parts, part)
    if rank > 0:
        return None
    done = [p for p in parts if p is not None]
    logits = torch.empty(len(items), done[0][0].shape[1])
    mirrored, targs = torch.empty_like(logits) if mirror else None, torch.empty(len(items), dtype=torch.long)
    for r, p in enumerate(parts):
        if p is not None:
            logits[r::world], targs[r::world] = p[0], p[2]
            if mirror:
                mirrored[r::world] = p[1]
    return (_tta_accuracy(logits, mirrored, targs) if mirror else None), logits, targs


@contextlib.contextmanager
def one_process():
    """Rank 0 of a data-parallel run, scoring alone after the others have gone: fastai's gathers (which read
    WORLD_SIZE) off, so that its predictions (the interpretation's top losses) wait for no other rank."""
    world = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if world is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = world


def flip_tta_accuracy(learn) -> float:
    "Validation accuracy with each image's and its mirror image's class probabilities averaged."
    return flip_tta(learn)[0]


def recalibrate_bn(learn, n: int = RECALIBRATION_IMAGES, seed: int = 0) -> int:
    """Re-estimate every BatchNorm layer's running statistics, weights unchanged, on `n` training images (a fixed
    sample, drawn without touching the global random state) preprocessed as validation is, at its current size, with
    torch's `update_bn`. Statistics gathered under training's augmentation and sizes then match the images scored,
    e.g. at a test size larger than the last training size. Returns the number of images used."""
    model = unwrap(on_data_device(learn))
    items = learn.dls.train_ds.items
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) or not len(items):
        return 0
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    update_bn(learn.dls.test_dl([items[i] for i in pick], bs=learn.dls.bs), model)
    return len(pick)


def _inner(learn) -> bool:
    """Predictions are made as an inner validation; a Learner that never finished an epoch (a fresh one, or a fit
    cancelled at its start) gets the empty epoch log its Recorder writes validation results into."""
    recorder = getattr(learn, "recorder", None)
    if recorder is not None and "log" not in recorder.__dict__:
        recorder.log = L(0)
    return True


def _fp32(learn):
    """fastai's own MixedPrecision drops its autocast after a fit and an inner validation makes none: predict in fp32
    with it removed. The library's (`precision.MixedPrecision`) makes one: predictions in the precision validated in."""
    return learn.removed_cbs([cb for cb in learn.cbs if isinstance(cb, fp16.MixedPrecision)
                              and not isinstance(cb, MixedPrecision)])


class Interpretation(ClassificationInterpretation):
    """fastai's ClassificationInterpretation, from predictions made once (its confusion matrix does not predict
    again), and made as an inner validation: the Learner's state after training (its Recorder's history, its
    iteration count) and its callbacks' fit events are left alone."""

    @classmethod
    def from_learner(cls, learn, ds_idx: int = 1, dl=None, act=None):
        if dl is None:
            dl = learn.dls[ds_idx].new(shuffle=False, drop_last=False)
        with _fp32(learn):
            preds, targs, losses = learn.get_preds(dl=dl, with_loss=True, act=act, inner=_inner(learn))
        interp = cls(learn, dl, losses, act)
        interp.preds, interp.targs = preds, targs
        return interp

    @classmethod
    def from_predictions(cls, learn, logits: torch.Tensor, targs: torch.Tensor, ds_idx: int = 1):
        """From the logits and targets of predictions already made on `learn.dls[ds_idx]`, in its order (a TTA
        pass's plain images): the losses and probabilities as `get_preds` computes them, no pass over the images."""
        dl = learn.dls[ds_idx].new(shuffle=False, drop_last=False)
        if len(logits) != len(dl.dataset) or len(targs) != len(logits):
            raise ValueError(f"{len(logits)} predictions and {len(targs)} targets for {len(dl.dataset)} images")
        with learn.loss_not_reduced():
            losses = learn.loss_func(logits, targs).view(-1)
        act = getattr(learn.loss_func, "activation", None)
        interp = cls(learn, dl, losses, None)
        interp.preds, interp.targs = act(logits) if act else logits, targs
        return interp

    def __getitem__(self, idxs):
        "Inputs, predictions, targets, decoded predictions and losses of the items at `idxs` (fastai's, inner)."
        if isinstance(idxs, torch.Tensor):
            idxs = idxs.tolist()
        idxs = list(idxs) if isinstance(idxs, list | tuple | range) else [idxs]
        items = getattr(self.dl.items, "iloc", L(self.dl.items))[idxs]
        dl = self.learn.dls.test_dl(items, with_labels=True)
        with _fp32(self.learn):
            inps, preds, targs, decoded = self.learn.get_preds(dl=dl, with_input=True, with_decoded=True,
                                                               act=self.act, reorder=False, inner=_inner(self.learn))
        return inps, preds, targs, decoded, self.losses[idxs]

    def confusion_matrix(self):
        n = len(self.vocab)
        return torch.bincount(self.targs.view(-1) * n + self.preds.argmax(-1).view(-1), minlength=n * n).view(n, n) \
            .numpy()

    def per_class_accuracy(self) -> dict[str, float]:
        "Each class's share of its validation images predicted right (classes with no image left out)."
        n, targs = len(self.vocab), self.targs.view(-1)
        total = torch.bincount(targs, minlength=n)
        right = torch.bincount(targs[self.preds.argmax(-1).view(-1) == targs], minlength=n)
        return {str(c): right[i].item() / total[i].item() for i, c in enumerate(self.vocab) if total[i]}

    def most_confused(self, k: int = 20) -> list[tuple[str, str, int]]:
        """The `k` (actual, predicted) pairs of different classes seen most often, most first: fastai's
        `most_confused` counted from the predictions (memory grows with the images, not with classes squared)."""
        n, targs, preds = len(self.vocab), self.targs.view(-1), self.preds.argmax(-1).view(-1)
        wrong = targs != preds
        pairs, counts = torch.unique(targs[wrong] * n + preds[wrong], return_counts=True)
        top = sorted(zip(pairs.tolist(), counts.tolist()), key=lambda pc: (-pc[1], pc[0]))[:k]
        return [(str(self.vocab[pair // n]), str(self.vocab[pair % n]), count) for pair, count in top]

    def plot_most_confused(self, k: int = 20):
        "The figure for many classes: the `k` most-confused pairs, and every class's accuracy, sorted."
        pairs, per_class = self.most_confused(k), sorted(self.per_class_accuracy().values())
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.3 * max(len(pairs), 10) + 1.5))
        left.barh(range(len(pairs)), [c for *_, c in pairs], color="C3")
        left.set_yticks(range(len(pairs)), [f"{a} \u2192 {p}" for a, p, _ in pairs], fontsize=8)
        left.invert_yaxis()
        left.set(xlabel="validation images", title=f"the {len(pairs)} most-confused pairs (actual \u2192 predicted)")
        right.plot(range(1, len(per_class) + 1), per_class, drawstyle="steps-mid")
        right.set(xlabel="class, from worst to best", ylabel="accuracy", ylim=(0, 1.02),
                  title=f"accuracy of each of {len(per_class)} classes, sorted")
        fig.tight_layout()
        return fig


def interpret(learn, folder: str | os.PathLike, k: int = 9, predictions=None) -> dict[str, float]:
    """Write confusion_matrix.png (most_confused.png beyond CONFUSION_LIMIT classes) and top_losses.png (the `k`
    worst) into `folder`; return the per-class accuracy. `predictions`: (logits, targets) already made on the
    validation set, in its order (else predicted here)."""
    folder = Path(folder)
    with learn.no_bar():  # predictions in the precision validated in (see _fp32)
        interp = Interpretation.from_learner(learn) if predictions is None else \
            Interpretation.from_predictions(learn, *predictions)
        n = len(interp.vocab)
        if n <= CONFUSION_LIMIT:
            interp.plot_confusion_matrix(figsize=(max(4, 0.6 * n + 2),) * 2, dpi=80)
            save_figure(fig := plt.gcf(), folder / "confusion_matrix.png")
        else:
            save_figure(fig := interp.plot_most_confused(), folder / "most_confused.png")
        plt.close(fig)  # only the figures drawn here: a notebook's own stay open
        interp.plot_top_losses(min(k, len(interp.losses)), nrows=3)
        save_figure(fig := plt.gcf(), folder / "top_losses.png")
        plt.close(fig)
    return interp.per_class_accuracy()
