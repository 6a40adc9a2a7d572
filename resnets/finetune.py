"""Starting from an earlier run's weights (`init`): its body into a new model whose head fits the new classes.

`load_body(model, source, ...)` copies every weight of an earlier run (a run folder, or a model file written by
`resnets export`) except its last linear layer, the head, which stays freshly made for this run's classes.
`body_head_splitter` splits the library's models into those two parameter groups, so fastai's `freeze`,
`fine_tune` and discriminative learning rates (`slice(lo, hi)`) work on them.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastai.torch_core import params
from torch import nn

from .checkpoint import CHECKPOINT, load_checkpoint
from .deploy import is_onnx, load
from .errors import InputError, MissingFile
from .learner import unwrap

__all__ = ["body_head_splitter", "read_weights", "load_body"]


def body_head_splitter(model: nn.Module) -> list:
    "Two parameter groups: everything before the last linear layer (the body), and that layer (the head)."
    model = unwrap(model)
    if not isinstance(model, nn.Sequential):  # a model of another shape: one group (fastai's default splitter)
        return [params(model)]
    return [params(model[:-1]), params(model[-1])]


def _architecture(s: dict) -> dict:
    "What builds the network, from a run's settings or a model file (older ones have no width or stem)."
    return {"model": s["model"], "width": s.get("width", 1.0), "stem": tuple(s.get("stem") or ())}


def _csv(v) -> str:
    return ",".join(map(str, v))


def read_weights(source: str | os.PathLike) -> tuple[dict, dict]:
    "The state dict and the settings (`model`, `width`) of a run folder's checkpoint or of an exported model file."
    path = Path(source)
    if path.is_dir():
        state = load_checkpoint(path)
        if state is None:
            raise MissingFile(f"{path} has no {CHECKPOINT} to start from: pass the --out folder of a `resnets "
                              "run`, or a file written by `resnets export`")
        s = state["settings"]
        return state["model"], {**_architecture(s), "vocab": state.get("vocab")}
    if not path.is_file():
        raise MissingFile(f"nothing to start from at {path}: pass a run folder (--out of `resnets run`) or a file "
                          "written by `resnets export`")

    if is_onnx(path):
        raise InputError(f"{path} is an ONNX file, which fine-tuning cannot start from: pass the run folder it was "
                         "exported from, or a .resnets file from `resnets export`")
    meta = load(path).meta
    return meta["state_dict"], {**_architecture(meta), "vocab": meta["vocab"]}


def load_body(model: nn.Module, source: str | os.PathLike, model_name: str, width: float = 1.0,
              stem: tuple[int, ...] = ()) -> dict:
    """Copy the weights of `source` into `model` (built as `model_name` at `width` with `stem`), all but the head's;
    returns the source's settings. A source of another architecture is an error naming the options that match it."""
    state, found = read_weights(source)
    ours = {"model": model_name, "width": width, "stem": tuple(stem or ())}
    theirs = {k: found[k] for k in ours}
    if theirs != ours:
        say = lambda a: f"{a['model']} (width {a['width']}{', stem ' + _csv(a['stem']) if a['stem'] else ''})"  # noqa: E731
        fix = f"--model {theirs['model']} --width {theirs['width']}" + (f" --stem {_csv(theirs['stem'])}"
                                                                       if theirs["stem"] else "")
        raise InputError(f"{source} holds a {say(theirs)}, but this run builds a {say(ours)}: pass {fix}")
    head = f"{len(model) - 1}."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise InputError(f"{source} does not fit a {model_name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return found
