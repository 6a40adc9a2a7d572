"""The chapter's Learner: cross-entropy, accuracy, and mixed precision chosen for the device.

  precision  'auto' (fp16 AMP on a CUDA GPU, fp32 elsewhere), 'fp16', 'bf16' or 'fp32'
"""

from __future__ import annotations

import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.metrics import accuracy
from torch import nn

__all__ = ["PRECISIONS", "choose_precision", "get_learner"]

PRECISIONS = ("auto", "fp16", "bf16", "fp32")


def choose_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    "The precision to train in on `device`, and one line saying why."
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type != "cuda":
        if precision in ("auto", "fp32"):
            return "fp32", f"training in fp32 on {device.type} (mixed precision needs a CUDA GPU)"
        # fastai's AMP on CPU disables itself with three warnings; CPU bf16 autocast has no hardware
        # support here and measured ~20x slower, so fp32 is the honest choice.
        return "fp32", f"training in fp32 on {device.type}: {precision} mixed precision needs a CUDA GPU"
    if precision == "auto":
        return "fp16", f"training in fp16 mixed precision on {torch.cuda.get_device_name(device)}"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "this GPU has no bfloat16 support: training in fp16 mixed precision instead"
    return precision, f"training in {precision}{' mixed precision' if precision != 'fp32' else ''} on cuda"


def get_learner(
    dls: DataLoaders,
    model: nn.Module,
    precision: str = "auto",
    loss_func=None,
    metrics=None,
    cbs=None,
    verbose: bool = True,
    **kwargs,
) -> Learner:
    "A fastai Learner with `nn.CrossEntropyLoss` and `accuracy`, in the precision chosen for `dls.device`."
    chosen, why = choose_precision(precision, dls.device)
    learn = Learner(
        dls,
        model,
        loss_func=loss_func if loss_func is not None else nn.CrossEntropyLoss(),
        metrics=metrics if metrics is not None else accuracy,
        cbs=cbs,
        **kwargs,
    )
    if chosen != "fp32":
        learn.add_cb(MixedPrecision(amp_mode=chosen))
    learn.precision = chosen
    if verbose:
        print(f"resnets: {why}")
    return learn
