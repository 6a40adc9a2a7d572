"""The library's error for bad input: raised by every check at the edge (arguments, options, files, data).

Its message names the problem and the fix, so the command line prints it as one line instead of a
traceback; any other exception is a bug, and keeps its traceback. It is a ValueError, so code that
catches ValueError keeps working.
"""

__all__ = ["InputError", "RunExists", "MissingFile", "RunInterrupted", "check_number"]


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


def check_number(name: str, value, kind=int, low=1, strict: bool = False) -> None:
    "Raise an InputError unless `value` is a `kind` (int by default; never a bool) >= `low` (> `low` if `strict`)."
    if isinstance(value, bool) or not isinstance(value, kind) or (value <= low if strict else value < low):
        what = "an integer" if kind is int else "a number"
        raise InputError(f"{name} must be {what} {'>' if strict else '>='} {low}, got {value!r}")
