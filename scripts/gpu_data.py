"""A copy of Imagenette small enough to travel to the GPU machine (64 MiB for the code, the wheels and the data).

    python scripts/gpu_data.py [--src ../shared/data/imagenette2-160] [--dest .data/imagenette2-160-gpu] [--mib 40]

Every image of imagenette2-160 (train/ and val/, the official split, 160 px on the shorter side as the chapter
resizes from) is re-encoded as JPEG at the highest quality whose size, estimated on a fixed sample of 400 images,
fits in `--mib`; `manifest.json` says what it is (source, quality, images, bytes). The original is 75 MiB; for
40 MiB this chose quality 35 and wrote 38.9 MiB (2026-12-06, in ~40 s on 2 cores). Accuracies trained on it are
those of a quality-reduced copy, not of the chapter's data: scripts/gpu.sh says so in its summary. `make gpu-data`
runs this and copies the fastai wheels into .whl/ (both ignored by git, both carried by the device tool).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

QUALITIES = (75, 60, 50, 45, 40, 35, 30)
SAMPLE = 400


def _encoded(path: Path, quality: int) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def choose_quality(files: list[Path], mib: float) -> tuple[int, float]:
    "The highest quality whose estimated total fits in `mib`, and that estimate (MiB); the lowest if none fits."
    sample = random.Random(0).sample(files, min(SAMPLE, len(files)))
    for q in QUALITIES:
        estimate = sum(len(_encoded(f, q)) for f in sample) / len(sample) * len(files) / 2**20
        if estimate <= mib or q == QUALITIES[-1]:
            return q, estimate
    raise AssertionError("unreachable")


def _write(job: tuple[Path, Path, int]) -> int:
    src, dest, quality = job
    data = _encoded(src, quality)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, default=Path("../shared/data/imagenette2-160"))
    p.add_argument("--dest", type=Path, default=Path(".data/imagenette2-160-gpu"))
    p.add_argument("--mib", type=float, default=40.0, help="the copy's size limit, MiB")
    a = p.parse_args(argv)
    files = sorted(f for split in ("train", "val") for f in (a.src / split).rglob("*") if f.suffix.lower() in
                   (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"no images under {a.src}/train and {a.src}/val: pass --src, the imagenette2-160 folder")
    quality, estimate = choose_quality(files, a.mib)
    print(f"{len(files)} images from {a.src}: JPEG quality {quality} (about {estimate:.1f} MiB) into {a.dest}")
    tmp = a.dest.with_name(a.dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = [(f, tmp / f.relative_to(a.src).with_suffix(".jpg"), quality) for f in files]
    with ProcessPoolExecutor() as pool:
        total = sum(pool.map(_write, jobs, chunksize=64))
    manifest = {"what": "imagenette2-160 re-encoded for the GPU run (quality-reduced: not the chapter's data)",
                "source": str(a.src), "quality": quality, "images": len(files), "bytes": total}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(a.dest, ignore_errors=True)
    tmp.rename(a.dest)
    print(f"wrote {len(files)} images, {total / 2**20:.1f} MiB, into {a.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
