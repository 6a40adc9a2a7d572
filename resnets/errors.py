"""The library's error for bad input: raised by every check at the edge (arguments, options, files, data).

Its message names the problem and the fix, so the command line prints it as one line instead of a
traceback; any other exception is a bug, and keeps its traceback. It is a ValueError, so code that
catches ValueError keeps working.
"""

import re

__all__ = ["InputError", "RunExists", "MissingFile", "RunInterrupted", "check_number", "one_line", "load_failure",
           "refused_message", "load_weights_only", "printable"]


class InputError(ValueError):
    "Bad input (an argument, an option, a file or a data folder): the message says what and how to fix it."


class RunExists(InputError, FileExistsError):
    "The output folder already holds a run (`unfinished`: one that `resume` can continue)."

    def __init__(self, message: str, folder=None, unfinished: bool = False):
        super().__init__(message)
        self.folder, self.unfinished = folder, unfinished


class RunInterrupted(KeyboardInterrupt):
    "Ctrl-C stopped a run; `folder` keeps its last finished epoch (None if none finished), for `resume`."

    def __init__(self, message: str, folder=None):
        super().__init__(message)
        self.folder = folder


class MissingFile(InputError, FileNotFoundError):
    "A file the caller named is not there."


def one_line(e: BaseException) -> str:
    "An error's message, without the lines fastai puts before one raised in a callback (naming the callback)."
    text = str(e)
    return text.rsplit("\n", 1)[-1].strip() if text.startswith("Exception occured in") else text


def check_number(name: str, value, kind=int, low=1, strict: bool = False) -> None:
    "Raise an InputError unless `value` is a `kind` (int by default; never a bool) >= `low` (> `low` if `strict`)."
    if isinstance(value, bool) or not isinstance(value, kind) or (value <= low if strict else value < low):
        what = "an integer" if kind is int else "a number"
        raise InputError(f"{name} must be {what} {'>' if strict else '>='} {low}, got {value!r}")


def load_failure(e: Exception) -> tuple[str | None, str]:
    """Why `torch.load(weights_only=True)` failed, in one line (torch's message is a paragraph, with advice to load
    the file unsafely that is never passed on): the function the file would have called while loading (None if it
    asked for none), and the reason."""
    text = str(e)  # torch words a refused global several ways: "Unsupported global: GLOBAL m.f was not an allowed
    # global", "unsupported GLOBAL posix.system whose module posix is blocked", "unrecognized function `f`" ...
    refused = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"(?:function|global|class) `?([\w.]+\.[\w]+)", text)
    if refused:
        return refused.group(1), f"it would call {refused.group(1)} while loading"
    lines = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[-1].splitlines()]
    detail = next((line for line in lines if line and "weights_only" not in line and "trust" not in line), "")
    return None, f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def refused_message(path, code: str, why: str, fix: str) -> str:
    "The one line for a file torch refused to unpickle because it asks to call `code`: it holds code, nothing ran."
    return (f"{path} holds code and was refused ({why}; a file of tensors needs no function called): nothing in it was "
            f"run. {fix}")


def load_weights_only(path, refused_fix: str, unreadable: str):
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain values, so that a crafted file runs no code.
    A file asking to call a function is refused in one line ending with `refused_fix`; any other failure is
    `unreadable` (formatted with `path` and `why`). The checkpoints, model files and weights files of earlier
    versions and other programs are all read here."""
    import torch  # here, not above: the record and the command line import this module, and not torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        code, why = load_failure(e)
        if code is not None:
            raise InputError(refused_message(path, code, why, refused_fix)) from e
        raise InputError(unreadable.format(path=path, why=why)) from e


def printable(text: str) -> str:
    """A file or class name as it can be shown on one terminal line: bytes that are not UTF-8 and control characters
    (a newline, a terminal escape) escaped, as Python writes them in a string literal."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
