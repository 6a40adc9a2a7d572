"""The library's error for bad input: raised by every check at the edge (arguments, options, files, data).

Its message names the problem and the fix, so the command line prints it as one line instead of a
traceback; any other exception is a bug, and keeps its traceback. It is a ValueError, so code that
catches ValueError keeps working.
"""

__all__ = ["InputError", "RunExists", "MissingFile"]


class InputError(ValueError):
    "Bad input (an argument, an option, a file or a data folder): the message says what and how to fix it."


class RunExists(InputError, FileExistsError):
    "The output folder already holds a run."


class MissingFile(InputError, FileNotFoundError):
    "A file the caller named is not there."
