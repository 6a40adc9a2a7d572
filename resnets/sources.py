"""Where a data set comes from: a folder, a CSV, one of the data sets known by name, or a URL.

  SOURCES              the data sets known by name (config.DATA_SETS) and fastai's URLs for them
  resolve_source(src)  a name, URL, folder or CSV -> the folder or file on disk; a name is first looked for,
                       already extracted, in `data_folders()` ($RESNETS_DATA, then the project's ../shared/data),
                       then downloaded with fastai's `untar_data` into fastai's data folder (~/.fastai/data)
  DataError            a source missing, unreachable or not laid out as resnets.data reads it
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from fastai.data.external import URLs, fastai_path, untar_data

from .config import DATA_SETS
from .errors import InputError

__all__ = ["SOURCES", "DataError", "data_folders", "local_copy", "resolve_source"]

_URLS = {"imagenette-160": URLs.IMAGENETTE_160, "imagenette-320": URLs.IMAGENETTE_320, "imagenette": URLs.IMAGENETTE,
         "imagewoof-160": URLs.IMAGEWOOF_160, "imagewoof-320": URLs.IMAGEWOOF_320, "imagewoof": URLs.IMAGEWOOF,
         "mnist-tiny": URLs.MNIST_TINY}
SOURCES: dict[str, str] = {name: _URLS[name] for name in DATA_SETS}  # config.DATA_SETS names them, torch-free

class DataError(InputError):
    "The data source is missing, unreachable or not laid out as `train/<class>/*` and `val/<class>/*`."


def data_folders() -> list[Path]:
    """Folders searched for an already-extracted data set before it is downloaded: `$RESNETS_DATA` (one or more,
    separated like PATH), then `../shared/data` beside a source checkout of this library (the project's copy)."""
    env = os.environ.get("RESNETS_DATA", "")
    folders = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [*folders, Path(__file__).resolve().parents[1].parent / "shared" / "data"]


def local_copy(name: str) -> Path | None:
    "The first extracted copy of data set `name` (a folder with train/, e.g. imagenette2-224) in `data_folders()`."
    return next((f / name for f in data_folders() if (f / name / "train").is_dir()), None)


def _local_copy(url: str) -> Path | None:
    return local_copy(url.rsplit("/", 1)[-1].split(".")[0])  # .../imagenette2-160.tgz -> imagenette2-160


def _download(url: str) -> Path:
    name = url.rsplit("/", 1)[-1].split(".")[0]
    dest = fastai_path("data") / name
    quiet = not sys.stdout.isatty()  # fastdownload's bar in a log file is a line of blocks
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            return untar_data(url)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # urllib, socket and HTTP errors all mean "could not fetch it"
        if not quiet:
            print(flush=True)  # end the progress bar's line, so the error starts on its own
        hint = os.environ.get("RESNETS_DATA_HINT", "get_data('/path/to/{folder}')").format(folder=name)
        raise DataError(
            f"could not download {url} ({type(e).__name__}: {e}). Without network, use a local copy of "
            f"{name}: {hint}, or put the extracted folder in $RESNETS_DATA or at {dest}"
        ) from e


def resolve_source(source: str | os.PathLike) -> Path:
    """A local folder, a short name from `SOURCES` or a fastai URL -> the extracted folder on disk; a name then a path
    (`imagenette-160/noisy_imagenette.csv`) -> that file or folder inside the data set."""
    if isinstance(source, str) and source.split("/", 1)[0] in SOURCES and "/" in source.strip("/"):
        name, rest = source.split("/", 1)
        return resolve_source(str(resolve_source(name) / rest))
    if isinstance(source, os.PathLike | str) and Path(source).expanduser().suffix.lower() == ".csv":
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"no CSV file at {path}: pass an existing CSV of image paths and labels, or a folder")
        return path
    if isinstance(source, os.PathLike) or (isinstance(source, str) and Path(source).expanduser().is_dir()):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise DataError(f"no folder at {path}: pass an existing folder, a URL, or one of {', '.join(SOURCES)}")
        return path
    if not isinstance(source, str):
        raise DataError(f"source must be a folder, a URL or a name, got {type(source).__name__}")
    if source in SOURCES or source.startswith(("http://", "https://")):
        url = SOURCES.get(source, source)
        return _local_copy(url) or _download(url)
    raise DataError(
        f"no folder at {Path(source).expanduser()} and {source!r} is not a known data set: "
        f"pass an existing folder, a URL, or one of {', '.join(SOURCES)}"
    )
