"""Image files as every pipeline of the library reads them: found, opened and made 8-bit RGB in one place.

  image_files(folder)    the image files under a folder (fastai's extensions, hidden entries skipped), following
                         directory links but never into a folder already walked, so a link loop ends the walk
  collect_images(paths)  files as given and the image files of folders, for a list of paths (`resnets predict`)
  open_rgb(file)         an image as 8-bit RGB, upright as its EXIF orientation says (a phone's portrait photo is
                         stored sideways with Orientation 6 or 8): 16-bit greyscale (PNG's `I;16`) scaled to 8 bits
                         (PIL's own convert clips it, so most of it turns white); an image over PIL's
                         decompression-bomb limit refused with a line that says how to allow it
                         ($RESNETS_MAX_IMAGE_PIXELS)
  check_image(file)      why a file cannot be trained on (None if it can), as the data checks report it
  RGBImage               fastai's PILImage, opened by `open_rgb`: the chapter's pipeline's ImageBlock
  image_size(file)       an image's (width, height) upright, from its header (EXIF orientation applied)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from fastai.data.transforms import image_extensions
from fastai.vision.core import PILImage
from numpy import ndarray
from PIL import Image, ImageOps
from torch import Tensor

from .errors import InputError, MissingFile

__all__ = ["PIXEL_LIMIT_ENV", "ImageTooLarge", "image_files", "collect_images", "open_rgb", "to_rgb", "check_image",
           "pixel_limit", "RGBImage", "upright", "image_size"]

PIXEL_LIMIT_ENV = "RESNETS_MAX_IMAGE_PIXELS"  # PIL's MAX_IMAGE_PIXELS for the library's reads; 0: no limit


class ImageTooLarge(InputError):
    "An image over PIL's decompression-bomb limit (PIL refuses to decode it: a crafted file could fill the memory)."


_SET: list = []  # (PIL's value before, the value set from the environment), while the environment sets one


def pixel_limit() -> int | None:
    """PIL's decompression-bomb limit for the library's reads (PIL warns above it, refuses twice it; None: no limit):
    `$RESNETS_MAX_IMAGE_PIXELS` when it is set (0: none), set into PIL (worker processes see the environment too),
    else PIL's own `Image.MAX_IMAGE_PIXELS` as it stands (as it was before, once the variable is unset)."""
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if value:
        try:
            n = int(float(value))
        except ValueError:
            raise InputError(f"${PIXEL_LIMIT_ENV} must be a number of pixels (0: no limit), got {value!r}") from None
        limit = None if n <= 0 else n
        if not _SET:
            _SET.append(Image.MAX_IMAGE_PIXELS)
        Image.MAX_IMAGE_PIXELS = limit
        _SET[1:] = [limit]
    elif _SET:
        before, limit = _SET
        if Image.MAX_IMAGE_PIXELS == limit:  # nobody changed it since: PIL's value as it was
            Image.MAX_IMAGE_PIXELS = before
        _SET.clear()
    return Image.MAX_IMAGE_PIXELS


def _too_large(path, e: Exception) -> ImageTooLarge:
    return ImageTooLarge(f"{path} is larger than PIL's decompression-bomb limit ({e}): if you trust the file, "
                         f"allow it with {PIXEL_LIMIT_ENV}=0 (no limit) or a larger number of pixels, or resize it")


_ORIENTATION = 0x0112  # EXIF's Orientation tag: 1 upright, 2-8 mirrored and/or rotated (5-8: width and height swap)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block: the pixels as stored
        return 1


def upright(im: Image.Image) -> Image.Image:
    "The image turned as its EXIF Orientation says (a new image; the same one when it has none or is upright)."
    return ImageOps.exif_transpose(im) if _orientation(im) in range(2, 9) else im


def image_size(path) -> tuple[int, int]:
    "An image file's (width, height) as `open_rgb` gives it, read from its header (its EXIF orientation applied)."
    pixel_limit()  # the header's size is checked against it as the file is opened
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if _orientation(im) in range(5, 9) else (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, upright (`upright`: its EXIF orientation applied). 16-bit greyscale is scaled to
    8 bits (0-65535 to 0-255); 32-bit integer images are too when their values go past 255 (PIL opens some 16-bit
    files so); 32-bit float ones are taken as 0-1 when they stay within it. The rest is PIL's convert (palettes,
    alpha, CMYK, 16-bit RGB already read as 8 bits)."""
    im = upright(im)
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max(initial=0)
        if mode.startswith("I;16") or (mode == "I" and top > 255):
            a = a / 257.0  # 65535 -> 255
        elif mode == "F" and top <= 1:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return im if im.mode == "RGB" else im.convert("RGB")


def open_rgb(path) -> Image.Image:
    "The image at `path` (a file or file object) as 8-bit RGB (see `to_rgb`), decoded with the library's pixel limit."
    pixel_limit()
    try:
        with Image.open(path) as im:
            im.load()  # decoded before the file closes
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from None


def check_image(path) -> str | None:
    "Why the file at `path` cannot be read as an image: 'too large' (PIL's bomb guard), 'unreadable', or None."
    pixel_limit()
    try:
        with Image.open(path) as im:
            im.draft(im.mode, (32, 32))  # a JPEG decodes at 1/8 scale: the check is quick
            im.load()
        return None
    except Image.DecompressionBombError:
        return "too large"
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError ...) for a bad file
        return "unreadable"


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files under `folder`, sorted, as fastai's `get_image_files` finds them (its extensions, hidden files
    and folders skipped, links followed; only regular files, and a line names any other), except that a folder reached
    a second time (a link loop such as `up -> ..`, or two links to one folder) is not walked again, and a line says
    which links were skipped."""
    folder = Path(folder)
    seen, skipped, found, special = {os.path.realpath(folder)}, [], [], []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(parent, d))
            if real in seen:
                skipped.append(os.path.join(parent, d))
                continue
            seen.add(real)
            keep.append(d)
        dirs[:] = keep
        for f in files:
            if f.startswith(".") or Path(f).suffix.lower() not in image_extensions:
                continue
            path = Path(parent) / f
            # only regular files (or links to them): a FIFO named x.jpg would hang every reader that opens it
            (found if path.is_file() else special).append(path)
    if special:
        shown = ", ".join(map(str, special[:3])) + (" ..." if len(special) > 3 else "")
        print(f"resnets: skipping {len(special)} image name(s) under {folder} that are not regular files (a pipe, "
              f"a device, a broken link): {shown}")
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        print(f"resnets: not following {len(skipped)} folder link(s) under {folder} into folders already searched "
              f"(a link loop, or two links to one folder): {shown}")
    return sorted(found)


def collect_images(paths: list[str | os.PathLike]) -> list[Path]:
    """The images a list of paths names (what `resnets predict` is given): files as given, folders searched with
    `image_files`; a folder without images or a path that does not exist is a MissingFile."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise MissingFile(f"no image files in {p}: pass images, or a folder that holds some")
            out += found
        elif not p.exists():
            raise MissingFile(f"no image at {p}")
        else:
            out.append(p)
    return out


class RGBImage(PILImage):
    """fastai's PILImage, its files and PIL images made RGB by `open_rgb` / `to_rgb` (upright as their EXIF says;
    16-bit greyscale scaled, not clipped; the pixel limit). `create` takes what fastai's does (a path, a str, bytes,
    a PIL image, an array or a tensor), and says so in its annotation: fastai's `test_dl` and `predict` accept an
    item by that annotation's types."""

    @classmethod
    def create(cls, fn: Path | str | Tensor | ndarray | bytes | Image.Image, **kwargs):
        if isinstance(fn, str | os.PathLike):
            return cls(open_rgb(fn))
        if isinstance(fn, bytes):
            return cls(open_rgb(io.BytesIO(fn)))
        if isinstance(fn, Image.Image):
            fn.load()  # an image opened lazily (Image.open) has no pixels to crop yet
            return cls(to_rgb(fn))
        return super().create(fn, **kwargs)
