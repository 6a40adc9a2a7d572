"""The fast data path: decode once into a uint8 cache, then augment whole batches with tensor ops.

The chapter's pipeline decodes every JPEG every epoch in loader workers, then runs fastai's batch
augmentation. On a small CPU both dominate the training of the chapter's small CNNs. Here:

  cache     every image is decoded once, resized (shortest side) and centre-cropped to presize x
            presize, and stored as uint8 in a memory-mapped .npy file under the cache folder
            (`$RESNETS_CACHE`, default ~/.cache/resnets). Its name is a hash of the file list, sizes,
            modification times and presize, so changed data build a new cache; it is reused otherwise.
  augment   on the training device, per batch: one `grid_sample` applies a random-resized crop (area
            min_scale..1, aspect 3/4..4/3), a horizontal flip (p 0.5), a rotation of up to 10 degrees
            and a zoom of up to 1.1 (p 0.75), then brightness and contrast (up to 0.2, p 0.75) and
            ImageNet normalisation. That is fastai's `aug_transforms(min_scale=0.5)` without its
            perspective warp, and with the presize crop done once (centre) instead of per epoch.
  valid     the whole presize image resized to the training size, as fastai's validation does.

There are no loader worker processes to restart: batches are slices of the cache. On CUDA the cache
moves to the GPU when it fits, otherwise batches are pinned and copied without blocking.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.transforms import CategoryMap, parent_label
from fastai.vision.all import imagenet_stats
from fastprogress.fastprogress import progress_bar
from PIL import Image

__all__ = ["cache_folder", "build_cache", "BatchAugment", "FastLoader", "fast_dataloaders"]


def cache_folder() -> Path:
    return Path(os.environ.get("RESNETS_CACHE", Path.home() / ".cache" / "resnets"))


def _decode(args) -> np.ndarray:
    path, size = args
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _cache_key(files: list[Path], size: int) -> str:
    h = hashlib.sha1(f"v1 {size}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_cache(files: list[Path], size: int, folder: str | os.PathLike | None = None, workers: int | None = None):
    "A uint8 array (n, size, size, 3) of the decoded images, memory-mapped from a cache file built once."
    folder = Path(folder) if folder is not None else cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images-{size}px-{len(files)}-{_cache_key(files, size)}.npy"
    if not path.exists():
        print(f"resnets: decoding {len(files)} images once, at {size} px, into {path}")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
            with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
                it = pool.map(_decode, [(f, size) for f in files], chunksize=64)
                for i, img in enumerate(progress_bar(it, total=len(files), display=sys.stdout.isatty())):
                    arr[i] = img
            arr.flush()
            del arr
            os.replace(tmp, path)  # a half-built cache never has the final name
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


class BatchAugment:
    "fastai's `aug_transforms(min_scale=...)` as batched tensor ops (no perspective warp): see the module doc."

    def __init__(self, size: int, min_scale: float = 0.5, flip: bool = True, max_rotate: float = 10.0,
                 max_zoom: float = 1.1, p_affine: float = 0.75, max_lighting: float = 0.2, p_lighting: float = 0.75,
                 stats=imagenet_stats):  # fmt: skip
        self.size, self.min_scale, self.flip = size, min_scale, flip
        self.max_rotate, self.max_zoom, self.p_affine = max_rotate, max_zoom, p_affine
        self.max_lighting, self.p_lighting = max_lighting, p_lighting
        self.mean, self.std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
        self._base: dict = {}

    def _grid(self, theta: torch.Tensor) -> torch.Tensor:
        # F.affine_grid, as one batched matmul over a cached base grid (several times faster on CPU)
        key = (theta.device, theta.dtype)
        if key not in self._base:
            lin = (torch.arange(self.size, device=theta.device, dtype=theta.dtype) * 2 + 1) / self.size - 1
            ys, xs = torch.meshgrid(lin, lin, indexing="ij")
            self._base[key] = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)
        return (self._base[key] @ theta.transpose(1, 2)).view(len(theta), self.size, self.size, 2)

    def random_theta(self, n: int, device) -> torch.Tensor:
        u = lambda: torch.rand(n, device=device)  # noqa: E731
        area = self.min_scale + (1 - self.min_scale) * u()
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u()
        w = (area * log_ratio.exp()).sqrt().clamp(max=1)  # crop width and height, as fractions of the image
        h = (area / log_ratio.exp()).sqrt().clamp(max=1)
        cx, cy = (1 - w) * (2 * u() - 1), (1 - h) * (2 * u() - 1)  # crop centre in [-1, 1] coordinates
        affine = u() < self.p_affine
        angle = torch.where(affine, (2 * u() - 1) * math.radians(self.max_rotate), 0.0)
        zoom = torch.where(affine, 1 + (self.max_zoom - 1) * u(), 1.0)
        flip = torch.where(u() < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=device)
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        theta = torch.stack([torch.stack([w * cos * flip, -h * sin, cx], 1),
                             torch.stack([w * sin * flip, h * cos, cy], 1)], 1)  # fmt: skip
        return theta

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        "uint8 (n, 3, s, s) -> normalised float (n, 3, size, size), augmented when `train`."
        x = x.float().div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if not train:
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return (x - mean) / std
        n = len(x)
        x = F.grid_sample(x, self._grid(self.random_theta(n, x.device)), mode="bilinear", padding_mode="reflection",
                          align_corners=False)  # fmt: skip
        if self.max_lighting:
            on = (torch.rand(n, 1, 1, 1, device=x.device) < self.p_lighting).float()
            bright = on * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1) * self.max_lighting
            contrast = 1 + on * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1) * self.max_lighting
            x = ((x - 0.5) * contrast + 0.5 + bright).clamp_(0, 1)
        return (x - mean) / std


class _Items:
    "What fastai reads from a data set: its length (and the items, for reference)."

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)


class FastLoader:
    "Batches of (augmented images, labels) sliced from the cache: what fastai's Learner needs of a DataLoader."

    n_inp = 1

    def __init__(self, images, labels, files, augment: BatchAugment, bs: int, train: bool, vocab, device=None):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (n, 3, s, s) view
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.dataset, self.augment, self.bs, self.train = _Items(files), augment, bs, train
        self.vocab, self.c = vocab, len(vocab)
        self.drop_last = self.shuffle = train
        self.device = torch.device("cpu")
        self.to(device or self.device)

    @property
    def n(self) -> int:
        return len(self.labels)

    def to(self, device):
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.images.numel() < free // 4:  # the whole cache on the GPU: no copies at all
                self.images, self.labels = self.images.to(device), self.labels.to(device)
            elif not self.images.is_pinned():
                self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        self.device = device
        return self

    def __len__(self) -> int:
        return self.n // self.bs if self.drop_last else math.ceil(self.n / self.bs)

    def __iter__(self):
        order = torch.randperm(self.n) if self.shuffle else torch.arange(self.n)
        for i in range(len(self)):
            idx = order[i * self.bs : (i + 1) * self.bs].to(self.images.device)
            x, y = self.images[idx], self.labels[idx]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield self.augment(x, self.train), y

    def one_batch(self):
        return next(iter(self))


def fast_dataloaders(items: list[Path], valid_name: str, presize: int, resize: int, bs: int, flip: bool = True,
                     device=None, min_scale: float = 0.5) -> DataLoaders:  # fmt: skip
    "DataLoaders for the fast path from the validated files of `find_items` (train/..., `valid_name`/...)."
    files = list(items)
    images = build_cache(files, presize)
    vocab = CategoryMap([parent_label(f) for f in files if f.parent.parent.name == "train"])
    labels = np.array([vocab.o2i[parent_label(f)] for f in files])
    is_valid = np.array([f.parent.parent.name == valid_name for f in files])
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    augment = BatchAugment(resize, min_scale=min_scale, flip=flip)
    loaders = [FastLoader(images[mask], labels[mask], [f for f, m in zip(files, mask) if m], augment, bs, train,
                          vocab, device)
               for mask, train in ((~is_valid, True), (is_valid, False))]  # fmt: skip
    return DataLoaders(*loaders, device=device)
