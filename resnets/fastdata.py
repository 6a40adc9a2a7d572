"""The fast data path: fastai's own DataLoaders, with the images decoded once and the chapter's augmentation fused.

The chapter's pipeline decodes every JPEG every epoch, then runs fastai's `aug_transforms(min_scale=0.5)`
as three passes over the batch (an affine + warp resample at presize, a crop-and-resize resample, then
lighting). On a small CPU both dominate the training of the chapter's small CNNs. This path keeps
everything a fastai user relies on (`Datasets`, `TfmdDL`, `show_batch`, `get_preds`, `predict`,
`export`, `Interpretation`) and changes two things:

  cache     every image is decoded once as fastai's `Resize(presize)` does on the validation set (the
            centre square, resized with PIL's bilinear filter) and stored as uint8 in a memory-mapped .npy
            file under `$RESNETS_CACHE` (default ~/.cache/resnets). Its name hashes the file list, sizes,
            modification times and presize, so changed data build a new cache. A file not in the cache
            (`learn.predict(path)`, a test set) is decoded the same way on the fly.
  augment   `ChapterAugment`: the same random draws as fastai's batch transforms, with the same
            distributions (per image: flip p 0.5; warp, rotation and zoom each with its own p 0.75 mask;
            brightness and contrast each with their own p 0.75 mask, in logit space; per batch: one
            square crop of 50-100 % of the area), composed into one homography and sampled once with
            `grid_sample` (align_corners=True, reflection padding, as fastai), then lighting.
            Validation resizes the presize square to the training size as fastai's crop does.

Non-square images (a person's photos, or the official Imagenette-160's, whose shorter side is 160; the copy under
shared/data was squared) are also stored whole, their shorter side resized to presize, in a second cache file: a
training image's presize square is cropped from it at a position drawn per image and epoch as fastai's `Resize`
draws it. fastai crops the original and then resizes, so those pixels differ from fastai's by interpolation only
(tested); validation squares are fastai's exactly.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders, Datasets, TfmdDL
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage, default_device
from fastai.vision.all import imagenet_stats
from fastai.vision.augment import RandomResizedCropGPU, RandTransform
from fastcore.basics import chunked
from PIL import Image

from .cache import cache_folder
from .config import AUGMENT_KW
from .decode import RESAMPLES, _load_strip, build_cache, build_strips, crop_strip, load_square, load_strip
from .files import DiskError
from .images import RGBImage
from .labels import class_label

__all__ = ["RESAMPLES", "cache_folder", "load_square", "load_strip", "resize_valid", "preprocess", "build_cache",
           "build_strips", "CachedImage", "CachedDL", "ChapterAugment", "fast_dataloaders",
           "set_image_size"]


def resize_valid(x: torch.Tensor, size: int, crop: float = 1.0) -> torch.Tensor:
    """A float batch resized to `size` as fastai's RandomResizedCropGPU does for validation (align_corners=True),
    after its centre crop of `crop` of each side (fastai's valid_scale)."""
    if crop != 1:
        h, w = x.shape[-2:]
        ch, cw = int(h * crop), int(w * crop)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top : top + ch, left : left + cw]
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def preprocess(img, presize: int, size: int, stats=imagenet_stats, resample: str = "bilinear",
               crop: float = 1.0) -> torch.Tensor:
    "One image as the validation set sees it: (1, 3, size, size), normalised. Used by export and predict."
    x = torch.from_numpy(load_square(img, presize, resample).copy()).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    return (resize_valid(x, size, crop) - mean) / std


class CachedImage(RandTransform):
    """An image file (or PIL image) -> its presize square as a uint8 TensorImage, from the cache when it holds it.

    As fastai's `Resize(presize)`: the centre square on validation; on training, a non-square image's square is
    at a position drawn per image (uniform along its longer side)."""

    split_idx, order = None, 0  # first: it reads the image
    # what fastai's test_dl / predict accept as an item (it reads a first transform's `input_types`), as PILImage's
    input_types = (Path, str, bytes, Image.Image, np.ndarray, torch.Tensor)

    def __init__(self, size: int, files=(), cache=None, strips=None, index=None, resample: str = "bilinear"):
        super().__init__()
        self.size, self.cache, self.strips, self.resample = size, cache, strips, resample
        self.index = {Path(f): i for i, f in enumerate(files)} if cache is not None else {}
        self.strip_of = {int(i): (int(s), int(n), bool(p)) for i, s, n, p in (index if strips is not None else ())}
        self.pct = 0.5

    def before_call(self, b, split_idx):
        # fastai's Resize draws as this; for a cached square, whose crop is the whole image, nothing is drawn, so
        # a data set of squares (Imagenette here) sees the same random numbers as before non-squares were cropped
        i = self.index.get(b if isinstance(b, Path) else Path(b)) if isinstance(b, str | Path) else None
        square = i is not None and i not in self.strip_of
        self.do, self.pct = True, 0.5 if split_idx or square else random.random()

    def encodes(self, f: Path | str | bytes | Image.Image | np.ndarray | torch.Tensor):
        if not isinstance(f, Path | str | Image.Image):  # bytes of a file, an array or a tensor: as the chapter's
            f = RGBImage.create(f)  # pipeline reads them (fastai's PILImage rules, EXIF orientation applied)
        i = self.index.get(f if isinstance(f, Path) else Path(f)) if not isinstance(f, Image.Image) else None
        if self.pct == 0.5 or isinstance(f, Image.Image):
            arr = np.array(self.cache[i]) if i is not None else load_square(f, self.size, self.resample)
        elif i is None:
            arr = np.array(crop_strip(*_load_strip(f, self.size, self.resample), self.pct))
        elif i in self.strip_of:
            start, n, portrait = self.strip_of[i]
            arr = np.array(crop_strip(self.strips[start : start + n], portrait, self.pct))
        else:  # a square: every position is the whole image
            arr = np.array(self.cache[i])
        return TensorImage(torch.from_numpy(arr).permute(2, 0, 1))

    def __getstate__(self):  # an exported Learner carries the settings, not the (large) cache
        return {**self.__dict__, "cache": None, "index": {}, "strips": None, "strip_of": {}}


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _masked(values: torch.Tensor, p: float, neutral: float) -> torch.Tensor:
    "`values` where a Bernoulli(p) draw says so, `neutral` elsewhere (fastai's `_draw_mask`)."
    return torch.where(torch.rand_like(values) < p, values, torch.full_like(values, neutral))


def _warp_homography(x_t: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    "fastai's perspective warp (`_WarpCoord`): the 3x3 map of the four moved corners back to the originals."
    n = len(x_t)
    orig = torch.tensor([[-1.0, -1], [-1, 1], [1, -1], [1, 1]], device=x_t.device).expand(n, 4, 2)
    targ = torch.stack([torch.stack([-1 - y_t, -1 - x_t], 1), torch.stack([-1 + y_t, 1 + x_t], 1),
                        torch.stack([1 + y_t, -1 + x_t], 1), torch.stack([1 - y_t, 1 - x_t], 1)], 1)
    zero, one = torch.zeros(n, device=x_t.device), torch.ones(n, device=x_t.device)
    rows = []
    for i in range(4):  # the coefficients c with orig = (c0 t + c1 u + c2) / (c6 t + c7 u + 1), (t, u) = targ
        t, u, ox, oy = targ[:, i, 0], targ[:, i, 1], orig[:, i, 0], orig[:, i, 1]
        rows.append(torch.stack([t, u, one, zero, zero, zero, -ox * t, -ox * u], 1))
        rows.append(torch.stack([zero, zero, zero, t, u, one, -oy * t, -oy * u], 1))
    c = torch.linalg.solve(torch.stack(rows, 1), orig.reshape(n, 8, 1))[..., 0]
    return torch.cat([c, one[:, None]], 1).view(n, 3, 3)


class ChapterAugment(RandTransform):
    """fastai's `aug_transforms(min_scale=0.5, size=size)` on a uint8-decoded float batch, in one resample.

    The draws and their distributions are fastai's (see the module doc); the affine, the warp and the crop are
    composed into one homography per image, so each output pixel is sampled once instead of twice."""

    split_idx, order = None, 30  # on both splits (validation: the resize only), between IntToFloat and Normalize

    def __init__(self, size: int, min_scale: float = 0.5, flip: bool = True, max_rotate: float = 10.0,
                 max_zoom: float = 1.1, max_warp: float = 0.2, p_affine: float = 0.75, max_lighting: float = 0.2,
                 p_lighting: float = 0.75, valid_crop: float = 1.0):
        super().__init__()
        self.size, self.min_scale, self.flip, self.valid_crop = size, min_scale, flip, valid_crop
        self.max_rotate, self.max_zoom, self.max_warp, self.p_affine = max_rotate, max_zoom, max_warp, p_affine
        self.max_lighting, self.p_lighting = max_lighting, p_lighting
        self._base: dict = {}

    def before_call(self, b, split_idx):
        self.do, self.train = True, split_idx == 0

    def _grid(self, mat: torch.Tensor) -> torch.Tensor:
        "The sampling grid of (n, 3, 3) homographies over the output's align_corners=True coordinates."
        key = (mat.device, mat.dtype, self.size)  # the size changes with progressive resizing
        if key not in self._base:
            lin = torch.linspace(-1, 1, self.size, device=mat.device, dtype=mat.dtype)
            ys, xs = torch.meshgrid(lin, lin, indexing="ij")
            self._base[key] = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3)
        g = torch.einsum("bij,pj->bpi", mat, self._base[key])  # faster on CPU than a matmul with inner size 3
        return (g[..., :2] / g[..., 2:]).view(len(mat), self.size, self.size, 2)

    def crop(self, h: int, w: int) -> torch.Tensor:
        "fastai's RandomResizedCropGPU(ratio=(1, 1)): one square crop for the batch, as a map from output to input."
        side = min(h, w)
        for _ in range(10):  # fastai's rejection loop (a square always fits in a square image)
            s = int(round(math.sqrt(float(_uniform(1, self.min_scale, 1.0, "cpu")) * w * h)))
            if s <= min(h, w):
                side = s
                break
        top, left = (int(torch.randint(0, d - side + 1, ())) for d in (h, w))
        ax, ay = (side - 1) / max(w - 1, 1), (side - 1) / max(h - 1, 1)
        bx, by = -1 + (2 * left + side - 1) / max(w - 1, 1), -1 + (2 * top + side - 1) / max(h - 1, 1)
        return torch.tensor([[ax, 0, bx], [0, ay, by], [0, 0, 1]])

    def affine(self, n: int, h: int, w: int, device) -> torch.Tensor:
        "Flip, rotation and zoom as fastai draws them, multiplied in fastai's order, then its aspect correction."
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        f = _masked(-one, 0.5, 1.0) if self.flip else one
        theta = _masked(_uniform(n, -self.max_rotate, self.max_rotate, device), self.p_affine, 0.0) * math.pi / 180
        s = 1 / _masked(_uniform(n, 1.0, self.max_zoom, device), self.p_affine, 1.0)
        col, row = (1 - s) * (2 * _uniform(n, 0, 1, device) - 1), (1 - s) * (2 * _uniform(n, 0, 1, device) - 1)
        mat = lambda *r: torch.stack([torch.stack(r[:3], 1), torch.stack(r[3:6], 1), torch.stack(r[6:], 1)], 1)
        m = mat(f, zero, zero, zero, one, zero, zero, zero, one)
        m = m @ mat(theta.cos(), theta.sin(), zero, -theta.sin(), theta.cos(), zero, zero, zero, one)
        m = m @ mat(s, zero, col, zero, s, row, zero, zero, one)
        m[:, 0, 1] *= h / w
        m[:, 1, 0] *= w / h
        return m

    def homography(self, n: int, h: int, w: int, device) -> torch.Tensor:
        "Output coordinates -> input coordinates for a batch: warp(affine(crop(u)))."
        warp = _warp_homography(*(_masked(_uniform(n, -self.max_warp, self.max_warp, device), self.p_affine, 0.0)
                                  for _ in range(2)))
        return warp @ self.affine(n, h, w, device) @ self.crop(h, w).to(device)

    def lighting(self, x: torch.Tensor) -> torch.Tensor:
        "fastai's Brightness then Contrast, each with its own mask, in logit space."
        n = len(x)
        lo, hi = 0.5 * (1 - self.max_lighting), 0.5 * (1 + self.max_lighting)
        bright = _masked(_uniform(n, lo, hi, x.device), self.p_lighting, 0.5).view(n, 1, 1, 1)
        log_c = -math.log(1 - self.max_lighting)
        contrast = _masked(_uniform(n, -log_c, log_c, x.device).exp(), self.p_lighting, 1.0).view(n, 1, 1, 1)
        # sigmoid((logit(x) + logit(b)) * c), in three passes over the batch
        return torch.addcmul(torch.logit(bright) * contrast, torch.logit(x, eps=1e-7), contrast).sigmoid_()

    def encodes(self, x: TensorImage):
        if not self.train:
            return TensorImage(resize_valid(x, self.size, getattr(self, "valid_crop", 1.0)))
        n, _, h, w = x.shape
        grid = self._grid(self.homography(n, h, w, x.device).to(x.dtype))
        out = F.grid_sample(x.as_subclass(torch.Tensor), grid, mode="bilinear", padding_mode="reflection",
                            align_corners=True)
        return TensorImage(self.lighting(out) if self.max_lighting else out)

    def __getstate__(self):
        return {**self.__dict__, "_base": {}}


class CachedDL(TfmdDL):
    """fastai's `TfmdDL`, reading a batch of cached images at once: one gather from the cache instead of fastai's
    per-item transforms and collation (~65 us an image in Python: a sixth of a 40 px speedrun step). The same batch
    as the per-item path, bit for bit, with the same random draws in the same order (a non-square training image's
    crop position, per image); a batch with an item the cache does not hold, a loader with item or before-batch
    transforms, goes the per-item way."""

    def create_batches(self, samps):
        tfm = self._cached()
        if tfm is None:
            yield from super().create_batches(samps)
            return
        self._labels = getattr(self, "_labels", {})
        for idxs in chunked(samps, self.bs, self.drop_last):
            slots = [tfm.index.get(self.dataset.items[i]) for i in idxs]
            yield self.do_batch([self.do_item(i) for i in idxs]) if None in slots else self._gather(tfm, idxs, slots)

    def _cached(self) -> CachedImage | None:
        "The dataset's CachedImage when a batch can be gathered: images from the cache, then labels, nothing else."
        tls = getattr(self.dataset, "tls", None)
        if self.bs is None or not self.indexed or self.after_item.fs or self.before_batch.fs or tls is None:
            return None
        fs = tls[0].tfms.fs if len(tls) == 2 else []
        ok = len(fs) == 1 and isinstance(fs[0], CachedImage) and fs[0].cache is not None
        return fs[0] if ok else None

    def _gather(self, tfm: CachedImage, idxs: list, slots: list) -> tuple:
        draw = not self.dataset.split_idx  # as CachedImage.before_call: training (or no split) draws a position
        if draw and any(i in tfm.strip_of for i in slots):
            arr = np.empty((len(slots), *tfm.cache.shape[1:]), dtype=np.uint8)
            for k, i in enumerate(slots):  # per image, in order: the random numbers the per-item path draws
                if i in tfm.strip_of:
                    start, n, portrait = tfm.strip_of[i]
                    arr[k] = crop_strip(tfm.strips[start : start + n], portrait, random.random())
                else:
                    arr[k] = tfm.cache[i]
        else:
            arr = tfm.cache[slots]  # one gather (numpy reads a memory map's rows in the order given)
        for i in idxs:
            if i not in self._labels:
                self._labels[i] = int(self.dataset.tls[1][i])
        x = TensorImage(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous())
        return x, TensorCategory(torch.tensor([self._labels[i] for i in idxs]))


def fast_dataloaders(train: list[Path], valid: list[Path], presize: int, resize: int, bs: int, flip: bool = True,
                     device=None, min_scale: float = 0.5, label=class_label, augment: str = "chapter",
                     stats=imagenet_stats, resample: str = "bilinear", valid_crop: float = 1.0,
                     num_workers: int | None = None) -> DataLoaders:
    """fastai DataLoaders over validated training and validation files: images from the uint8 cache, labels by
    `label` (their folders' names by default), the chapter's augmentation as one fused batch transform
    (`augment="light"`: its crop and flip only); `stats`, `resample`, `valid_crop` as `get_data`'s.

    `num_workers` (--num-workers): processes gathering batches; by default none on a CPU (a batch is a gather from
    the memory-mapped cache, cheaper than handing it between processes on a few cores) and up to 8 for a GPU,
    whose batches are then pinned for the copy to it (a GPU waits for its loader otherwise)."""
    files = [Path(f) for f in [*train, *valid]]
    cached = sorted(set(files))  # one cache for the same images however they are split
    try:
        images, (strips, index) = (build_cache(cached, presize, resample=resample),
                                   build_strips(cached, presize, resample=resample))
    except DiskError as e:  # a read-only or full cache folder: each image decoded as it is read (the chapter's way)
        print(f"resnets: no image cache ({e}): decoding every image as it is read instead; set $RESNETS_CACHE to a "
              "writable folder with space for a faster start")
        images, strips, index = None, None, None
    splits = [list(range(len(train))), list(range(len(train), len(files)))]
    tfms = [[CachedImage(presize, cached, images, strips, index, resample)], [label, Categorize()]]
    dsets = Datasets(files, tfms=tfms, splits=splits)
    after_batch = [IntToFloatTensor(), ChapterAugment(resize, min_scale=min_scale, flip=flip, valid_crop=valid_crop,
                                                      **AUGMENT_KW[augment]),
                   Normalize.from_stats(*stats)]
    cuda = torch.device(device if device is not None else default_device()).type == "cuda"
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1) if cuda else 0
    return dsets.dataloaders(bs=bs, after_batch=after_batch, device=device, num_workers=num_workers, pin_memory=cuda,
                             dl_type=CachedDL)


def set_image_size(dls: DataLoaders, size: int) -> None:
    """Change the size the batch augmentation resizes to (progressive resizing, testing at a higher resolution), on
    both pipelines: fastai's RandomResizedCropGPU and ChapterAugment. The training and validation loaders share
    their transforms, so a run sets it before each phase (resnets.callbacks.ImageSizes)."""
    loaders = [getattr(dl, "dl", dl) for dl in (dls.train, dls.valid)]  # a distributed run wraps each loader
    for t in [t for dl in loaders for t in getattr(getattr(dl, "after_batch", None), "fs", [])]:
        if isinstance(t, ChapterAugment):
            t.size = size
        elif isinstance(t, RandomResizedCropGPU):
            t.size = (size, size)
