"""Nothing lost: a checkpoint after every epoch, and resuming from it (callbacks.Checkpoint writes and restores it).

`checkpoint.safetensors` in a run folder holds what the next epoch needs to be the one an uninterrupted run
would have trained: model and optimiser state, the fp16 loss scaler's state, the last finished epoch
(the learning-rate schedule's position follows from it), the random number generators (torch, CUDA, NumPy,
Python's, each data loader's), fastai's smoothed training loss, and the per-epoch history. It is written
to a temporary file and renamed, so a kill at any moment leaves the previous checkpoint whole.

It is a safetensors file: the tensors, and everything else (the plain Python values around them, with a
marker where each tensor goes) as JSON in its header, so no pickle is read when it is loaded and a crafted file
cannot run code. Run folders of earlier versions hold `checkpoint.pth` (torch's format, with the same tree);
they still load, with `torch.load(weights_only=True)`, and are replaced by the new file at the next epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from fastai.torch_core import to_device
from fastcore.foundation import L
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .config import CHECKPOINT_FILES, DEFAULTS
from .errors import InputError, load_weights_only
from .files import atomic_write
from .learner import unwrap
from .models import weights_mismatch

__all__ = ["fingerprint", "CHECKPOINT", "LEGACY_CHECKPOINT", "TrainingDiverged", "find_checkpoint", "load_checkpoint",
           "check_state", "check_fits", "check_same_settings", "save_checkpoint", "rank_state", "restore_model",
           "restore_training_state", "set_deterministic"]

CHECKPOINT, LEGACY_CHECKPOINT = CHECKPOINT_FILES  # the legacy one: resnets 0.2 and earlier (torch's, weights-only)
FORMAT = "resnets-checkpoint-v1"  # the header key holding the JSON tree


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


def _loaders(dls) -> list:
    "The data loaders, a distributed run's unwrapped (fastai's DistributedDL draws from the loader it wraps)."
    return [getattr(dl, "dl", dl) for dl in dls.loaders]


def rank_state(learn) -> dict:
    """What is this process's own in a data-parallel run: its random number generators (each rank draws its own
    augmentation) and its smoothed training loss. The weights and the optimiser's state are the same on every rank."""
    smooth = learn.recorder.smooth_loss
    return {"rng": _rng_state(learn.dls), "smooth_loss": _plain((smooth.count, smooth.val))}


def _rng_state(dls) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # its keys, an array, as ints: weights_only loads them
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
             "random": random.getstate(),
             "loaders": [dl.rng.getstate() if hasattr(dl, "rng") else None for dl in _loaders(dls)]}
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
    for dl, s in zip(_loaders(dls), state["loaders"]):
        if s is not None and hasattr(dl, "rng"):
            dl.rng.setstate(_py_rng(s))
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs' as there are here (a run moved to fewer GPUs,
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):  # or to a CPU, goes on)
            torch.cuda.set_rng_state(s, i)


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


def _pack(obj, tensors: dict):
    """A tree of tensors and plain values as JSON-ready values, each tensor moved into `tensors` under a number and
    replaced by {"__tensor__": number}; tuples, and dicts whose keys are not all strings, keep their kind."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().as_subclass(torch.Tensor).cpu()
        key = str(len(tensors))
        tensors[key] = t.clone() if t.untyped_storage().nbytes() != t.nbytes else t.contiguous()  # views: own data
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {"__tensor__", "__tuple__", "__items__"} & obj.keys():
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"a checkpoint holds tensors and plain values, not {type(obj).__name__}")


def _unpack(obj, tensors):
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors.get_tensor(obj["__tensor__"])
        if "__tuple__" in obj:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    return obj


def _atomic_save(obj, path: Path) -> None:
    """`obj` as a safetensors file (its tree as JSON in the header), through the library's one atomic writer (a
    kill leaves the previous file whole; results' permissions)."""
    tensors = {}
    tree = json.dumps(_pack(obj, tensors))  # NaN and inf (a diverged loss) round-trip through Python's json
    atomic_write(path, safetensors_bytes(tensors, metadata={FORMAT: tree}))
    legacy = path.with_name(LEGACY_CHECKPOINT)
    if legacy.exists():  # an older version's checkpoint, now superseded: one checkpoint per run folder
        legacy.unlink()


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    "The checkpoint file in a run folder (this version's, else an earlier version's), or None if there is none."
    for name in (CHECKPOINT, LEGACY_CHECKPOINT):
        if (path := Path(folder) / name).exists():
            return path
    return None


def _read(path: Path) -> dict:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if FORMAT not in meta:
            raise ValueError(f"a safetensors file without {FORMAT!r} in its header")
        return _unpack(json.loads(meta[FORMAT]), f)


def load_checkpoint(folder: str | os.PathLike) -> dict | None:
    "The checkpoint in a run folder, checked (`check_state`), or None if there is none."
    path = find_checkpoint(folder)
    if path is None:
        return None
    if path.name == CHECKPOINT:
        try:  # no pickle: tensors and JSON only
            return check_state(_read(path), path)
        except (SafetensorError, ValueError, KeyError, TypeError, OSError, RecursionError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             "): remove it to start the run again") from e
    # an earlier version's (resnets before weights-only checkpoints saved NumPy arrays and fastcore lists: refused)
    state = load_weights_only(path, "Another program, or a resnets older than 0.2, wrote it: remove it to start the "
                              "run again", "{path} cannot be read ({why}): remove it to start the run again")
    return check_state(state, path)


def _refused(path, what: str) -> InputError:
    return InputError(f"{path} is not a usable checkpoint: {what}; remove it to start the run again (or put back a "
                      "copy of an earlier one)")


def check_state(state, path) -> dict:
    """A loaded checkpoint's tree checked before anything uses it (one InputError line naming what is wrong): the
    parts every use reads, of their types; the epoch a whole number, that of the history's last record; the model's
    weights named tensors, all finite (NaN in a BatchNorm statistic trains at chance, silently). What it must fit
    (the network's shapes, the run's epochs) is checked where that is known (`restore_model`, the run)."""
    if not isinstance(state, dict):
        raise _refused(path, f"it holds a {type(state).__name__}, not a tree of a run's state")
    for key, kind in (("epoch", int), ("history", list), ("model", dict), ("settings", dict), ("opt", dict)):
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _refused(path, f"its {key!r} is {'missing' if value is None else 'a ' + type(value).__name__}, "
                                 f"not a {kind.__name__}")
    epoch, history = state["epoch"], state["history"]
    if not all(isinstance(h, dict) for h in history) or epoch < 0 or epoch != len(history) - 1:
        raise _refused(path, f"its epoch ({epoch}) is not the last of the {len(history)} epochs its history records")
    for name, w in state["model"].items():
        if not isinstance(name, str) or not isinstance(w, torch.Tensor):
            raise _refused(path, f"its model holds {type(w).__name__} {name!r}, not a named tensor")
        if w.is_floating_point() and not torch.isfinite(w).all():
            raise _refused(path, f"its model's {name} holds NaN or infinite values (weights of a run that diverged, "
                                 "or damage): training on from it, or predicting with it, gives nothing")
    return state


def check_fits(learn, state: dict, path=None) -> None:
    """A checkpoint's model and optimiser state checked against `learn`'s network before either is loaded (one
    InputError line): the same tensors, of the same shapes and dtypes; an optimiser state per parameter, its
    tensors of that parameter's shape."""
    path = path or "the checkpoint"
    if problem := weights_mismatch(unwrap(learn.model).state_dict(), state["model"]):
        raise _refused(path, f"its model is not this run's network ({problem})")
    params = [p for p, *_ in learn.opt.all_params()] if learn.opt is not None else None
    opt = state["opt"].get("state")
    if params is None:
        return
    if not isinstance(opt, list) or len(opt) != len(params) or not all(isinstance(st, dict) for st in opt):
        raise _refused(path, f"its optimiser state is not one record for each of the network's {len(params)} "
                             "parameters")
    for i, (p, st) in enumerate(zip(params, opt)):
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.numel() != 1 and v.shape != p.shape:
                raise _refused(path, f"its optimiser's {k!r} for parameter {i} is {tuple(v.shape)}, the "
                                     f"parameter {tuple(p.shape)}")
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
                raise _refused(path, f"its optimiser's {k!r} for parameter {i} holds NaN or infinite values")


def save_checkpoint(learn, results, folder: Path, ranks: list | None = None) -> None:
    """Write `folder/checkpoint.safetensors` for the epoch `results` has just recorded (atomically: see the module).
    `ranks`: every rank's `rank_state` in a data-parallel run (rank 0 writes the file), so that each resumes with its
    own random state."""
    scaler = getattr(learn, "scaler", None)
    _atomic_save({"epoch": len(results.history) - 1, "model": unwrap(learn.model).state_dict(),
                  "opt": _plain(learn.opt.state_dict()), **rank_state(learn),
                  "scaler": scaler.state_dict() if scaler is not None else None,
                  "history": _plain(results.history), "settings": _plain(results.settings),
                  "vocab": [str(c) for c in getattr(learn.dls, "vocab", [])],
                  **({"ranks": [_plain(r) for r in ranks]} if ranks else {})},
                 Path(folder) / CHECKPOINT)


def _own(state: dict, rank: int) -> dict:
    "The random state and smoothed loss of `rank` in a checkpoint (rank 0's, the file's own, if it kept no others)."
    ranks = state.get("ranks")
    return ranks[rank] if ranks else {"rng": state["rng"], "smooth_loss": state["smooth_loss"]}


def restore_model(learn, state: dict, rank: int = 0, path=None) -> None:
    """A checkpoint's model and random state (`rank`'s own, in a data-parallel run), into `learn` (before `fit`),
    checked to fit it first (`check_fits`); the optimiser's and the loss scaler's follow in
    `restore_training_state`, from the fit's start (callbacks.Checkpoint)."""
    learn.create_opt()  # so that `fit` keeps this optimiser (and its parameters) rather than making one
    check_fits(learn, state, path)
    learn.model.load_state_dict(state["model"])
    try:
        _set_rng_state(_own(state, rank)["rng"], learn.dls)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise _refused(path or "the checkpoint", f"its random state cannot be restored ({type(e).__name__}: "
                                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None


def restore_training_state(learn, state: dict, rank: int = 0) -> None:
    """The optimiser's state, the fp16 loss scaler's and the smoothed training loss of a checkpoint, at the start of
    a fit: after fastai's TrainEvalCallback has moved the model to the data's device (the optimiser state goes
    where the parameters are now), MixedPrecision has made a new scaler and the Recorder has reset its smoothed
    loss. The hypers stay those `fit` set; the scheduler sets lr and momentum before every batch."""
    device = next(learn.model.parameters()).device
    extra = {k: to_device(v, device) for k, v in state["opt"].items() if k not in ("state", "hypers")}  # Lookahead's
    learn.opt.load_state_dict({**extra, "state": to_device(state["opt"]["state"], device), "hypers": learn.opt.hypers})
    if state.get("scaler") and getattr(learn, "scaler", None) is not None:
        learn.scaler.load_state_dict(state["scaler"])
    learn.recorder.smooth_loss.count, learn.recorder.smooth_loss.val = _own(state, rank)["smooth_loss"]


def fingerprint(train: list, valid: list, root: str | os.PathLike, extra: bytes = b"") -> str:
    """A digest of the images a run trains and validates on: each file's path below `root` (so a moved data folder is
    still the same data), its split, its size and its first and last 4 KiB. An image replaced, added, removed or
    moved between classes changes it; a checkpoint keeps it, so that resuming over other images is refused. `extra`:
    more that decides the labels (a CSV's contents)."""
    h, root = hashlib.sha1(b"resnets data v1\n" + extra), Path(root)  # extra: a CSV's labels
    for split, files in (("train", train), ("valid", valid)):
        for f in files:
            f = Path(f)
            with open(f, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(4096)
                if size > 8192:
                    fh.seek(-4096, os.SEEK_END)
                tail = fh.read(4096)
            rel = f.relative_to(root) if f.is_relative_to(root) else f
            # surrogateescape: a file name that is not UTF-8 hashes as its bytes (the same digest for UTF-8 ones)
            h.update(f"{split} {rel.as_posix()} {size}\n".encode(errors="surrogateescape") + head + tail)
    return h.hexdigest()[:20]


def check_same_settings(saved: dict, now: dict, out, auto: bool = False) -> None:
    "Refuse a resume whose settings differ from the checkpoint's (`auto`: --precision auto, which may resolve anew)."
    before, after = saved.get("world_size", 1), now.get("world_size", 1)
    if before != after:  # each rank resumes with its own random state: there is one for each of the run's ranks
        launch = lambda n: f"torchrun, {n} processes in all" if n > 1 else "one process"  # noqa: E731
        raise InputError(f"cannot resume {out} with {after} process(es): it was trained by {before}, and each resumes "
                         f"with its own random state; launch it as it was, with {launch(before)}")
    if saved.get("data_key", now.get("data_key")) != now.get("data_key"):  # (earlier versions kept none)
        raise InputError(f"cannot resume {out}: its images are not those it was trained on so far (an image was "
                         "replaced, added, removed or moved to another class since its checkpoint): resume over the "
                         "same images, or train a new run into another folder")
    # the command line differs by --resume; a moved data folder is still the data (its images are compared above)
    ignore = {"argv", "data", "source", "data_key", "world_size", "compile"}  # compiled or not: the same model
    saved = {**{k: v for k, v in DEFAULTS.items() if k not in saved}, **saved}  # an older checkpoint's: defaults
    diff = {k: (saved.get(k), now.get(k)) for k in (set(saved) | set(now)) - ignore if saved.get(k) != now.get(k)}
    if "precision" in diff and auto:  # --precision auto on another machine (fp16 on a GPU, bf16 or fp32 on a CPU)
        print(f"resnets: resuming {out}, trained in {diff.pop('precision')[0]} so far, in {now['precision']} here "
              "(--precision auto: what this machine has)")
    if diff:
        shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise InputError(f"cannot resume {out} with different settings ({shown}): use the run's own options")
