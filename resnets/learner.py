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

from functools import partial

import numpy as np
import torch
from fastai.callback import fp16
from fastai.callback.mixup import MixUp
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.data.core import DataLoaders
from fastai.learner import AvgLoss, Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, accuracy
from fastai.optimizer import (
    Optimizer,
    adam_step,
    average_grad,
    average_sqr_grad,
    debias,
    l2_reg,
    ranger,
    step_stat,
    weight_decay,
)
from fastai.torch_core import find_bs, num_distrib
from fastcore.foundation import L
from torch import nn

from .config import OPTIMIZERS, PRECISIONS, check_choice, check_regularisation
from .errors import InputError

__all__ = ["ForeachAdam", "OPT_FUNCS", "PRECISIONS", "check_regularisation", "cpu_bf16", "choose_precision",
           "MixedPrecision", "top_k_accuracy", "top_5_accuracy", "accuracy_metric", "top_5_metric", "ValidLoss",
           "unwrap", "get_learner", "fit_flat_cos"]  # fmt: skip


class ForeachAdam(Optimizer):
    """fastai's `Adam` (AdamW: decoupled weight decay; fastai's defaults, hypers, state and `do_wd`), each step done
    by torch's `_foreach_` ops over all the tensors of a parameter group at once instead of fastai's five Python
    callbacks per tensor: the same operations in the same order, so the same numbers to the last bit (tested).
    L2 regularisation (`decouple_wd=False`) steps as fastai's does."""

    def __init__(self, params, lr, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5, wd: float = 0.01,
                 decouple_wd: bool = True):  # fmt: skip
        cbs = [weight_decay if decouple_wd else l2_reg, partial(average_grad, dampening=True), average_sqr_grad,
               step_stat, adam_step]  # fastai's Adam's, which describe the step (and give the hypers' defaults)
        super().__init__(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)
        self.decouple_wd = decouple_wd

    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("fastai optimizers do not take a closure")
        if not self.decouple_wd:
            return super().step()
        groups = {}  # tensors that share hypers, step count and weight decay take each stage together
        for p, _, state, hyper in self.all_params(with_grad=True):
            groups.setdefault((id(hyper), state.get("step", 0), state.get("do_wd", True)), (hyper, []))[1].append(p)
        for (_, step, do_wd), (h, ps) in groups.items():
            grads, data, states = [p.grad.data for p in ps], [p.data for p in ps], [self.state[p] for p in ps]
            for st, g in zip(states, grads):
                for k in ("grad_avg", "sqr_avg"):
                    if st.get(k) is None:
                        st[k] = torch.zeros_like(g)
            avg, sqr = [st["grad_avg"] for st in states], [st["sqr_avg"] for st in states]
            if do_wd and h["wd"] != 0:
                torch._foreach_mul_(data, 1 - h["lr"] * h["wd"])
            torch._foreach_mul_(avg, h["mom"])
            torch._foreach_add_(avg, grads, alpha=1 - h["mom"])
            torch._foreach_mul_(sqr, h["sqr_mom"])
            torch._foreach_addcmul_(sqr, grads, grads, value=1 - h["sqr_mom"])
            step += 1
            debias1, debias2 = debias(h["mom"], 1 - h["mom"], step), debias(h["sqr_mom"], 1 - h["sqr_mom"], step)
            denom = torch._foreach_div(sqr, debias2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, h["eps"])
            torch._foreach_addcdiv_(data, avg, denom, value=-h["lr"] / debias1)
            for st in states:
                st["step"] = step


OPT_FUNCS = {"adam": ForeachAdam, "ranger": ranger}  # the `opt` setting's optimisers: fastai's, with fastai's defaults
assert tuple(OPT_FUNCS) == OPTIMIZERS, "config.OPTIMIZERS names these"


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


def cpu_bf16() -> str | None:
    """What this processor runs bfloat16 with natively, as torch reports it ('AMX', 'AVX512-BF16'), or None.

    oneDNN then runs bf16 convolutions in hardware (measured on an AMD EPYC with AVX512-BF16: a ResNet-18 training
    step at 128 px 1.95x faster than fp32); without it bf16 is emulated and many times slower than fp32."""
    cpu = torch.cpu  # torch's own checks (2.1+), not /proc/cpuinfo's strings; a torch without them: None
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def choose_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    "The precision to train in on `device`, and one line saying why (a warning where the choice will be slow)."
    check_choice("precision", precision, PRECISIONS)  # the record's check: this is also called without one
    device = torch.device(device)
    if device.type != "cuda":
        native = cpu_bf16() if device.type == "cpu" else None
        if precision == "auto":
            if native:
                return "bf16", f"training in bf16 mixed precision on cpu ({native}: native bfloat16; --precision " \
                               "fp32 for full precision)"  # fmt: skip
            return "fp32", f"training in fp32 on {device.type} (no native bfloat16 here, and fp16 needs a CUDA GPU)"
        if precision == "bf16" and device.type == "cpu":
            if native:
                return "bf16", f"training in bf16 mixed precision on cpu ({native}: native bfloat16)"
            return "bf16", "warning: training in bf16 on cpu as asked, but this processor has no native bfloat16 " \
                           f"(torch reports {torch.backends.cpu.get_cpu_capability()}): emulated, it is typically " \
                           "several times slower than --precision fp32"  # fmt: skip
        if precision == "fp32":
            return "fp32", f"training in fp32 on {device.type}"
        # fastai's fp16 AMP is CUDA's; torch's CPU fp16 autocast has no fast kernels on these processors
        return "fp32", f"training in fp32 on {device.type}: {precision} mixed precision needs a CUDA GPU" + \
            (" (this CPU has native bfloat16: --precision bf16)" if native else "")  # fmt: skip
    if precision == "auto":
        return "fp16", f"training in fp16 mixed precision on {torch.cuda.get_device_name(device)}"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "this GPU has no bfloat16 support: training in fp16 mixed precision instead"
    return precision, f"training in {precision}{' mixed precision' if precision != 'fp32' else ''} on cuda"


class MixedPrecision(fp16.MixedPrecision):
    """fastai's mixed precision (autocast from each batch to its loss, a loss scaler for fp16), with autocast on the
    data's device: fastai 2.8.12's always asks for CUDA's, which on a CPU runs everything in fp32. On a CPU,
    bf16 only (it needs no loss scaling: bf16 has fp32's range); BatchNorm runs on bf16 activations with fp32
    statistics and parameters, the loss in fp32 (torch's CPU autocast lists), the optimiser updates fp32 weights."""

    def before_fit(self):
        kind = self.dls.device.type
        if kind == "cuda":
            return super().before_fit()
        if self.amp_mode != fp16.AMPMode.BF16:
            raise ValueError(f"{self.amp_mode.value} autocast needs a CUDA GPU: on {kind} use bf16")
        self.autocast = torch.autocast(kind, dtype=torch.bfloat16)
        self.learn.scaler, self.scales = torch.amp.GradScaler(kind, enabled=False), L()

    def before_batch(self):
        if getattr(self, "autocast", None) is None:  # an inner validation (get_preds(inner=True)) after a fit, which
            # calls no before_fit: predict under the autocast trained in (fastai's would fail here)
            dtype = torch.bfloat16 if self.amp_mode == fp16.AMPMode.BF16 else torch.float16
            self.autocast = torch.autocast(self.dls.device.type, dtype=dtype)
        super().before_batch()


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
                    cbs=cbs, **kwargs)  # fmt: skip
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
