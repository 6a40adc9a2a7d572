"""The README's own-photos command, measured: a folder of a few hundred photos, 4 classes, trained from scratch with
the library's batch-size choice against the chapter's fixed 128 (what it did before), same seeds.

    python scripts/own_photos.py OUT_DIR [--data ../shared/data/imagenette2-160] [--per-class 60] [--seeds 42,0,1]

The photo folder is a person's layout (one folder per class, no train/val split: the library holds out a seeded
20 % of each class): the first `--per-class` training images of the first four Imagenette classes, linked into
OUT_DIR/photos. Each arm is `resnets run resnet18 --data OUT_DIR/photos --seed S` (the chapter's 5 epochs at 128 px,
the chapter's pipeline), the baseline with `--bs 128`. Every run's results.json (settings, seed, versions, device,
time) lands in OUT_DIR/<arm>-seed<S>/, and a table of them in OUT_DIR/summary.json.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnets.cli import main as resnets_main  # noqa: E402
from resnets.results import load_results  # noqa: E402

ARMS = {"chosen": [], "bs128": ["--bs", "128"]}


def photo_folder(data: Path, out: Path, per_class: int, classes: int = 4) -> Path:
    "A folder of class folders, linked from the first `per_class` training images of the first `classes` classes."
    photos = out / "photos"
    for c in sorted(d.name for d in (data / "train").iterdir() if d.is_dir())[:classes]:
        (photos / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((data / "train" / c).iterdir())[:per_class]:
            link = photos / c / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return photos


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette2-160"))
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--seeds", default="42,0,1")
    args = p.parse_args(argv)
    out = Path(args.out)
    photos = photo_folder(Path(args.data), out, args.per_class)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        for arm, extra in ARMS.items():
            folder = out / f"{arm}-seed{seed}"
            if not (folder / "results.json").exists() or not load_results(folder).finished:
                rc = resnets_main(["run", "resnet18", "--data", str(photos), "--seed", str(seed), "--no-progress",
                                   "--out", str(folder), *extra, *(["--resume"] if folder.exists() else [])])
                if rc:
                    raise SystemExit(rc)
            r = load_results(folder)
            rows.append({"arm": arm, "seed": seed, "bs": r.settings["bs"], "n_train": r.settings["n_train"],
                         "accuracy": r.accuracy, "seconds": r.wall_time, "device": r.device})
    summary = {"photos": str(photos), "per_class": args.per_class, "runs": rows,
               "mean_accuracy": {a: statistics.fmean(r["accuracy"] for r in rows if r["arm"] == a) for a in ARMS}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for r in rows:
        print(f"{r['arm']:<8} seed {r['seed']:>3}  bs {r['bs']:>4}  accuracy {r['accuracy']:.4f}  {r['seconds']:.0f} s")
    print("mean accuracy:", {a: round(v, 4) for a, v in summary["mean_accuracy"].items()})


if __name__ == "__main__":
    main()
