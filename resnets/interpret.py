"""What a trained model gets wrong: fastai's `ClassificationInterpretation`, drawn into a run's folder.

  confusion_matrix.png  actual class (rows) against predicted class (columns), on the validation images
  top_losses.png        the validation images the model is most confidently wrong about (fastai's grid:
                        predicted / actual / loss / probability of the actual class)
  per-class accuracy    the share of each class's validation images predicted right, in results.json

`interpret(learn, folder)` does this after every complete one-process run that saves a folder, from one pass over
the validation set; `resnets interpret RUN_DIR` redraws it from a run's checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.interpret import ClassificationInterpretation
from fastcore.foundation import L

from .results import save_figure

__all__ = ["Interpretation", "interpret", "interpret_run"]


def _inner(learn) -> bool:
    """Predictions are made as an inner validation; a Learner that never finished an epoch (a fresh one, or a fit
    cancelled at its start) gets the empty epoch log its Recorder writes validation results into."""
    recorder = getattr(learn, "recorder", None)
    if recorder is not None and "log" not in recorder.__dict__:
        recorder.log = L(0)
    return True


def _fp32(learn):
    "fastai's MixedPrecision drops its autocast after a fit and an inner validation makes none: predict in fp32."
    return learn.removed_cbs([cb for cb in learn.cbs if isinstance(cb, MixedPrecision)])


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
            .numpy()  # fmt: skip

    def per_class_accuracy(self) -> dict[str, float]:
        "Each class's share of its validation images predicted right (classes with no image left out)."
        cm = self.confusion_matrix()
        return {str(c): float(cm[i, i] / cm[i].sum()) for i, c in enumerate(self.vocab) if cm[i].sum()}


def interpret(learn, folder: str | os.PathLike, k: int = 9, predictions=None) -> dict[str, float]:
    """Write confusion_matrix.png and top_losses.png (the `k` worst) into `folder`; return the per-class accuracy.
    `predictions`: (logits, targets) already made on the validation set, in its order (else predicted here)."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    with learn.no_bar():  # predictions in fp32 (see _fp32)
        interp = Interpretation.from_learner(learn) if predictions is None else \
            Interpretation.from_predictions(learn, *predictions)  # fmt: skip
        n = len(interp.vocab)
        interp.plot_confusion_matrix(figsize=(max(4, 0.6 * n + 2),) * 2, dpi=80)
        save_figure(fig := plt.gcf(), folder / "confusion_matrix.png")
        plt.close(fig)  # only the figures drawn here: a notebook's own stay open
        interp.plot_top_losses(min(k, len(interp.losses)), nrows=3)
        save_figure(fig := plt.gcf(), folder / "top_losses.png")
        plt.close(fig)
    return interp.per_class_accuracy()


def interpret_run(run_dir: str | os.PathLike, k: int = 9, data: str | None = None) -> dict[str, float]:
    "Rebuild a saved run's Learner from its checkpoint and redraw its interpretation plots into its folder."
    from .checkpoint import load_checkpoint
    from .errors import MissingFile
    from .experiments import build

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir) if run_dir.is_dir() else None
    if state is None:
        raise MissingFile(f"no trained run at {run_dir}: pass the --out folder of a `resnets run` (it holds "
                          "checkpoint.pth)")  # fmt: skip
    s = state["settings"]
    from .config import OPTIONS

    # the checkpoint holds the trained weights: no budget to plan, no earlier run to start from (it may be gone)
    options = {k: v for k, v in s.items() if k in OPTIONS and k not in ("budget", "init")}
    options["data"] = data or s["data"]
    for key in ("sizes", "subset", "classes"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    learn, _ = build(s["name"], verbose=False, **options)  # its ImageSizes validates at the run's final size
    learn.model.load_state_dict(state["model"])
    learn.model.to(learn.dls.device)  # an inner validation skips the fit's move to the data's device
    return interpret(learn, run_dir, k)
