"""Nothing lost: a checkpoint after every epoch, resume from it, and guards that stop a run clearly.

`checkpoint.pth` in a run folder holds what the next epoch needs to be the one an uninterrupted run
would have trained: model and optimiser state, the last finished epoch (the one-cycle schedule's
position follows from it), the random number generators (torch, CUDA, NumPy, Python's, each data
loader's), fastai's smoothed training loss, and the per-epoch history. It is written to a temporary
file and renamed, so a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback

from .errors import InputError

__all__ = ["CHECKPOINT", "TrainingDiverged", "Checkpoint", "StopOnNaN", "load_checkpoint", "set_deterministic"]

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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate(),
             "loaders": [dl.rng.getstate() if hasattr(dl, "rng") else None for dl in dls.loaders]}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, dls) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    for dl, s in zip(dls.loaders, state["loaders"]):
        if s is not None and hasattr(dl, "rng"):
            dl.rng.setstate(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(folder: str | os.PathLike) -> dict | None:
    "The checkpoint in a run folder, or None if there is none."
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"{path} cannot be read ({type(e).__name__}: {e}): remove it to start the run again") from e


class Checkpoint(Callback):
    "Saves `checkpoint.pth` after every epoch; given a loaded checkpoint, restores it before training continues."

    order = 62  # after RunHistory (Recorder.order + 1 = 51 ... ) has recorded the epoch

    def __init__(self, folder: Path | None, results, state: dict | None = None):
        self.folder, self.results, self.state = folder, results, state
        self.start_epoch = state["epoch"] + 1 if state else 0

    def restore(self, learn) -> None:
        "Model, optimiser and random state of the checkpoint, into `learn` (before `fit`)."
        s = self.state
        learn.model.load_state_dict(s["model"])
        learn.create_opt()
        learn.opt.load_state_dict(_to(s["opt"], next(learn.model.parameters()).device))
        _set_rng_state(s["rng"], learn.dls)

    def before_fit(self):
        if self.state is not None:  # the Recorder has just reset its smoothed loss: carry it on instead
            self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = self.state["smooth_loss"]

    def after_epoch(self):
        if self.folder is None or self.epoch < self.start_epoch:
            return
        smooth = self.recorder.smooth_loss
        _atomic_save({"epoch": self.epoch, "model": _unwrap(self.learn.model).state_dict(),
                      "opt": self.learn.opt.state_dict(), "rng": _rng_state(self.dls),
                      "smooth_loss": (smooth.count, smooth.val),
                      "history": list(self.results.history), "settings": self.results.settings,
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
