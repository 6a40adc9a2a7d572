"""Nothing lost: a checkpoint after every epoch, resume from it, and guards that stop a run clearly.

`checkpoint.pth` in a run folder holds what the next epoch needs to be the one an uninterrupted run
would have trained: model and optimiser state, the fp16 loss scaler's state, the last finished epoch
(the learning-rate schedule's position follows from it), the random number generators (torch, CUDA, NumPy,
Python's, each data loader's), fastai's smoothed training loss, and the per-epoch history. It is written
to a temporary file and renamed, so a kill at any moment leaves the previous checkpoint whole.

It holds only tensors and plain Python values (no NumPy arrays, no fastcore lists), so it loads with
`torch.load(weights_only=True)`: a crafted file cannot run code when loaded.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastcore.foundation import L

from .errors import InputError
from .results import atomic_write

__all__ = ["CHECKPOINT", "TrainingDiverged", "Checkpoint", "StopOnNaN", "load_checkpoint", "load_failure",
           "set_deterministic"]  # fmt: skip

CHECKPOINT = "checkpoint.pth"


class TrainingDiverged(InputError):
    "The loss became NaN or infinite."


def set_deterministic(on: bool = True) -> None:
    """Make torch choose deterministic kernels (cuDNN included), or go back to the fast defaults.

    On CPU the library's runs repeat exactly with the same seed either way. On a GPU, cuDNN's autotuner
    and atomic adds in some backward kernels make runs differ in the last bits unless this is on (slower)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def _rng_state(dls) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # its keys, an array, as ints: weights_only loads them
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
             "random": random.getstate(),
             "loaders": [dl.rng.getstate() if hasattr(dl, "rng") else None for dl in dls.loaders]}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_rng(s) -> tuple:
    "A `random.Random` state back as the nested tuple `setstate` insists on."
    version, internal, gauss = s
    return version, tuple(internal), gauss


def _set_rng_state(state: dict, dls) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_py_rng(state["random"]))
    for dl, s in zip(dls.loaders, state["loaders"]):
        if s is not None and hasattr(dl, "rng"):
            dl.rng.setstate(_py_rng(s))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj):
    "Containers as dicts, lists and tuples, NumPy numbers as Python's (fastai's hypers hold both): weights_only-safe."
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, list | L):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor) and type(obj) is not torch.Tensor:  # fastai's TensorBase & co: plain tensors
        return obj.as_subclass(torch.Tensor)
    return obj


def _atomic_save(obj, path: Path) -> None:
    "torch.save through the library's one atomic writer (a kill leaves the previous file whole; results' permissions)."
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def load_failure(e: Exception) -> tuple[str | None, str]:
    """Why `torch.load(weights_only=True)` failed, in one line (torch's message is a paragraph): the function
    the file would have called while loading (None if it asked for none), and the reason."""
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return refused.group(1), f"it would call {refused.group(1)} while loading"
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    return None, f"{type(e).__name__}: {detail.splitlines()[0]}" if detail else type(e).__name__


def load_checkpoint(folder: str | os.PathLike) -> dict | None:
    "The checkpoint in a run folder, or None if there is none."
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    try:  # tensors and plain values only: loading a crafted checkpoint must not run its code
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        code, why = load_failure(e)
        if code is not None:  # resnets before weights-only checkpoints saved NumPy arrays and fastcore lists
            raise InputError(f"{path} is not a safe checkpoint ({why}, which can run code; an older resnets or "
                             "another program wrote it): remove it to start the run again") from e  # fmt: skip
        raise InputError(f"{path} cannot be read ({why}): remove it to start the run again") from e


class Checkpoint(Callback):
    "Saves `checkpoint.pth` after every epoch; given a loaded checkpoint, restores it before training continues."

    order = 62  # after RunHistory (Recorder.order + 1 = 51 ... ) has recorded the epoch

    def __init__(self, folder: Path | None, results, state: dict | None = None):
        self.folder, self.results, self.state = folder, results, state
        self.start_epoch = state["epoch"] + 1 if state else 0

    def restore(self, learn) -> None:
        """Model and random state of the checkpoint, into `learn` (before `fit`); the optimiser's and the loss
        scaler's follow in `before_fit`."""
        s = self.state
        learn.model.load_state_dict(s["model"])
        learn.create_opt()  # so that `fit` keeps this optimiser (and its parameters) rather than making one
        _set_rng_state(s["rng"], learn.dls)

    def before_fit(self):
        if self.state is None:
            return
        s, learn = self.state, self.learn
        # TrainEvalCallback (order -10) has just moved the model to the data's device (a GPU): the optimiser
        # state goes where the parameters are now. The hypers stay those `fit` set; the scheduler sets lr and
        # momentum before every batch.
        device = next(learn.model.parameters()).device
        extra = {k: _to(v, device) for k, v in s["opt"].items() if k not in ("state", "hypers")}  # Lookahead's
        learn.opt.load_state_dict({**extra, "state": _to(s["opt"]["state"], device), "hypers": learn.opt.hypers})
        # MixedPrecision (order 10) has just made a new GradScaler at its initial scale: carry the saved one on
        if s.get("scaler") and getattr(learn, "scaler", None) is not None:
            learn.scaler.load_state_dict(s["scaler"])
        # the Recorder (order 50) has just reset its smoothed loss: carry it on instead
        self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = s["smooth_loss"]

    def after_epoch(self):
        if self.folder is None or self.epoch < self.start_epoch:
            return
        smooth, scaler = self.recorder.smooth_loss, getattr(self.learn, "scaler", None)
        _atomic_save({"epoch": len(self.results.history) - 1, "model": _unwrap(self.learn.model).state_dict(),
                      "opt": _plain(self.learn.opt.state_dict()), "rng": _rng_state(self.dls),
                      "scaler": scaler.state_dict() if scaler is not None else None,
                      "smooth_loss": _plain((smooth.count, smooth.val)),
                      "history": _plain(self.results.history), "settings": _plain(self.results.settings),
                      "vocab": [str(c) for c in getattr(self.dls, "vocab", [])]},
                     self.folder / CHECKPOINT)  # fmt: skip


def _unwrap(model):
    "The model inside a DistributedDataParallel wrapper (a distributed run's checkpoint loads without it)."
    return getattr(model, "module", model)


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj


class StopOnNaN(Callback):
    "Stops training at the first NaN or infinite loss, naming the epoch and batch and what to try."

    order = -5

    def __init__(self, folder: Path | None = None):
        self.folder = folder

    def after_loss(self):
        if self.training and not torch.isfinite(self.learn.loss).all():
            lr = self.opt.hypers[-1]["lr"] if self.opt is not None else None
            where = f"epoch {self.epoch + 1}, batch {self.iter + 1} of {self.n_iter}"
            msg = f"the training loss became {self.learn.loss.item()} at {where}"
            if lr is not None:
                msg += f" (learning rate {lr:.2g} at that step)"
            msg += ": try a lower maximum learning rate (--lr), e.g. a third of this run's"
            if self.folder is not None and (self.folder / CHECKPOINT).exists():
                msg += f". The last good epoch is kept in {self.folder / CHECKPOINT}"
            raise TrainingDiverged(msg)
