"""Precision: which one a run trains in on its device, and the autocast that runs it.

  choose_precision(precision, device)  'auto' → fp16 AMP on a CUDA GPU, bf16 autocast on a CPU with native bfloat16
                                       (`cpu_bf16`), fp32 elsewhere; with one line saying why
  MixedPrecision                       fastai's callback, with autocast on the data's device (a CPU's bf16 too)
  autocast_dtype(precision)            the torch dtype autocast runs a precision in ('fp32': None)
  device_autocast(learn)               the learner's autocast, for evaluation outside fastai's loop
"""

from __future__ import annotations

import contextlib

import torch
from fastai.callback import fp16
from fastcore.foundation import L

from .config import PRECISIONS, check_choice

__all__ = ["PRECISIONS", "cpu_bf16", "choose_precision", "autocast_dtype", "device_autocast", "MixedPrecision"]

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    "The dtype autocast computes `precision` in: float16, bfloat16, or None for fp32 (no autocast)."
    check_choice("precision", precision, tuple(_DTYPES))
    return _DTYPES[precision]


def device_autocast(learn):
    "The autocast the learner trains under (fp16/bf16 on CUDA, bf16 on a CPU), for evaluation outside fastai's loop."
    dtype = autocast_dtype(learn.precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(learn.dls.device.type, dtype=dtype)


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
                               "fp32 for full precision)"
            return "fp32", f"training in fp32 on {device.type} (no native bfloat16 here, and fp16 needs a CUDA GPU)"
        if precision == "bf16" and device.type == "cpu":
            if native:
                return "bf16", f"training in bf16 mixed precision on cpu ({native}: native bfloat16)"
            return "bf16", "warning: training in bf16 on cpu as asked, but this processor has no native bfloat16 " \
                           f"(torch reports {torch.backends.cpu.get_cpu_capability()}): emulated, it is typically " \
                           "several times slower than --precision fp32"
        if precision == "fp32":
            return "fp32", f"training in fp32 on {device.type}"
        # fastai's fp16 AMP is CUDA's; torch's CPU fp16 autocast has no fast kernels on these processors
        return "fp32", f"training in fp32 on {device.type}: {precision} mixed precision needs a CUDA GPU" + \
            (" (this CPU has native bfloat16: --precision bf16)" if native else "")
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
            self.autocast = torch.autocast(self.dls.device.type, dtype=autocast_dtype(self.amp_mode.value))
        super().before_batch()

