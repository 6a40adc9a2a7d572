"""The chapter's Learner: cross-entropy, accuracy, and mixed precision chosen for the device.

`get_learner(dls, model, ...)` takes, beyond fastai's Learner's own arguments:

  precision        'auto' (fp16 AMP on a CUDA GPU, bf16 autocast on a CPU with native bfloat16, fp32
                   elsewhere), 'fp16', 'bf16' or 'fp32'
  label_smoothing  eps: the target puts 1-eps on the true class and eps spread over all classes
  mixup            alpha of the Beta distribution MixUp draws its mixing weights from (0: off)
  verbose          print the precision chosen, and why

(The weight average and the BatchNorm re-estimation are callbacks: resnets.callbacks.)

Validation accuracy, top-5 accuracy and loss are the whole validation set's in distributed runs too. fastai's
DistributedDL pads the last batches with repeated images so that every rank gets as many, and drops the repeats
only from gathered predictions and targets, not from per-batch means: so the metrics here gather predictions
(`accuracy_metric`, `top_5_metric`) and the valid loss is recomputed on gathered predictions (`ValidLoss`).
"""

from __future__ import annotations

import numpy as np
import torch
from fastai.callback.mixup import MixUp
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.data.core import DataLoaders
from fastai.learner import AvgLoss, Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, accuracy
from fastai.torch_core import find_bs, num_distrib
from fastcore.foundation import L
from torch import nn

from .config import check_regularisation
from .errors import InputError
from .precision import MixedPrecision, choose_precision

__all__ = ["top_k_accuracy", "top_5_accuracy", "accuracy_metric", "top_5_metric", "ValidLoss", "unwrap", "get_learner",
           "fit_flat_cos"]


def top_k_accuracy(preds: torch.Tensor, targs: torch.Tensor, k: int = 5) -> torch.Tensor:
    "Fraction of rows whose target is among the `k` highest scores (k is capped at the number of classes)."
    if preds.dim() != 2 or targs.shape != preds.shape[:1]:
        raise InputError(f"expected preds (n, classes), targets (n,); got {tuple(preds.shape)}, {tuple(targs.shape)}")
    top = preds.topk(min(k, preds.shape[1]), dim=1).indices
    return (top == targs[:, None]).any(dim=1).float().mean()


def top_5_accuracy(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    "Top-5 accuracy, as a fastai metric (the Imagenette leaderboard reports top-1: `accuracy`)."
    return top_k_accuracy(preds, targs, k=5)


def accuracy_metric() -> AccumMetric:
    "fastai's `accuracy` over all predictions of an epoch: exact in distributed runs (a new one per Learner)."
    # AccumMetric keeps the epoch's predictions, gathered across ranks without the padding; flatten=False
    # because the predictions are (n, classes) scores against (n,) targets.
    return AccumMetric(accuracy, flatten=False)


def top_5_metric() -> AccumMetric:
    "`top_5_accuracy` over all predictions of an epoch: exact in distributed runs (a new one per Learner)."
    return AccumMetric(top_5_accuracy, flatten=False)


class ValidLoss(AvgLoss):
    "The Recorder's valid loss, exact in distributed runs: `loss_func` on each batch's gathered, un-padded predictions."

    def accumulate(self, learn):
        if num_distrib() <= 1:  # one process: no padding, fastai's mean of the batch losses is exact
            return super().accumulate(learn)
        # Each rank's `learn.loss` averages over its padded batch, and gathering a scalar cannot drop the repeats;
        # gathered predictions and targets come without them. Only validation reaches here (the Recorder's
        # `loss`), where MixUp has put the plain loss function back. fp32 as under autocast (AMP's logits are fp16).
        pred, yb = learn.to_detach((learn.pred, learn.yb), cpu=False)
        n = find_bs(yb)
        with torch.no_grad():
            self.total += learn.loss_func(pred.float(), *yb).mean().item() * n
        self.count += n


def unwrap(model: nn.Module) -> nn.Module:
    "The model inside a DistributedDataParallel wrapper (the model itself outside a distributed run)."
    return getattr(model, "module", model)


def get_learner(
    dls: DataLoaders,
    model: nn.Module,
    precision: str = "auto",
    loss_func=None,
    metrics=None,
    cbs=None,
    label_smoothing: float = 0.0,
    mixup: float = 0.0,
    verbose: bool = True,
    channels_last: bool = True,
    **kwargs,
) -> Learner:
    """A fastai Learner with cross-entropy and `accuracy`, in the precision chosen for `dls.device`; the model's
    convolutions channels-last (`channels_last`, the default: oneDNN's and cuDNN's fast layout, measured
    1.3-1.4x a ResNet-50 step at 224 px on a CPU; docs/performance.md). The model's layout is enough: a contiguous
    batch comes out of the first convolution channels-last, and its state_dict is the same tensors."""
    # `metrics` from this module's factories (not fastai's per-batch `accuracy`) stay exact in distributed runs.
    chosen, why = choose_precision(precision, dls.device)
    check_regularisation(label_smoothing, mixup)
    if loss_func is None:
        # fastai's flat cross-entropy is torch's plus what fastai's tools read from the loss: `activation` (softmax,
        # for predict and get_preds), `decodes` (argmax, for show_results and Interpretation), and `y_int`, which
        # MixUp needs to mix losses, not labels. torch's own loss has none of them.
        loss_func = CrossEntropyLossFlat(label_smoothing=label_smoothing)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cbs = [*L(cbs), *([MixUp(mixup)] if mixup else [])]
    learn = Learner(dls, model, loss_func=loss_func, metrics=metrics if metrics is not None else accuracy_metric(),
                    cbs=cbs, **kwargs)
    learn.recorder.loss = ValidLoss()  # in place of fastai's AvgLoss, which counts a distributed loader's padding
    if chosen != "fp32":
        learn.add_cb(MixedPrecision(amp_mode=chosen))
    learn.precision = chosen
    if verbose:
        print(f"resnets: {why}")
    return learn


def fit_flat_cos(learn: Learner, n_epoch: int, lr: float, pct_start: float = 0.75, div_final: float = 1e5,
                 start_epoch: int = 0) -> None:
    """fastai's `Learner.fit_flat_cos` (the full `lr`, then cosine annealing to `lr / div_final` over the last
    `1 - pct_start` of the steps), which also resumes: fastai's passes `start_epoch=0` to `fit` whatever it is
    given (fastai 2.8.12), so a resumed run would start its schedule and its epochs again."""
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", lr)
    lrs = np.array([h["lr"] for h in learn.opt.hypers])
    learn.fit(n_epoch, cbs=ParamScheduler({"lr": combined_cos(pct_start, lrs, lrs, lrs / div_final)}),
              start_epoch=start_epoch)
