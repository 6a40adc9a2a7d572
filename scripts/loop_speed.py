"""Seconds per epoch of an experiment in the library's own loop, this checkout's code against another's, side by side
in one command on one machine (issue 35: ResNet-50 at 224 px).

    python scripts/loop_speed.py OUT.json --data DIR [--baseline CHECKOUT] [--experiment resnet50] [--size 224]
                                 [--subset 32] [--bs 64] [--epochs 3]

Each arm is `resnets run EXPERIMENT --data DIR --subset N --size S --presize S --bs B --epochs E` in a fresh process
(the baseline's with PYTHONPATH at `--baseline`, a checkout of the earlier code, e.g. `git worktree add /tmp/base
07cd0ed`), on the chapter's pipeline and on the fast path, and this checkout's also with --compile. The figure is
the median epoch after the first (the first builds the image cache and, compiled, compiles): train + validation
images, as results.json records each epoch's seconds. Settings, versions and device go into OUT.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def arm(code: Path, args, extra: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "resnets", "run", args.experiment, "--data", args.data, "--subset", str(args.subset),
           "--size", str(args.size), "--presize", str(args.size), "--bs", str(args.bs), "--epochs", str(args.epochs),
           "--no-progress", "--out", str(out), *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    r = json.loads((out / "results.json").read_text())
    times = [h["time"] for h in r["history"]]
    return {"code": str(code), "options": extra, "epoch_s": statistics.median(times[1:]), "epoch_times": times,
            "accuracy": r["history"][-1]["accuracy"], "precision": r["settings"]["precision"],
            "n_train": r["settings"]["n_train"], "n_valid": r["settings"]["n_valid"], "device": r["device"],
            "versions": r["versions"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--data", required=True)
    p.add_argument("--baseline", help="a checkout of the earlier code to time beside this one")
    p.add_argument("--experiment", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--subset", type=int, default=32)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    arms = []
    if args.baseline:
        arms += [("baseline, chapter pipeline", Path(args.baseline), []),
                 ("baseline, fast path", Path(args.baseline), ["--fast-data"])]
    arms += [("this code, chapter pipeline", ROOT, []), ("this code, fast path", ROOT, ["--fast-data"]),
             ("this code, fast path, compiled", ROOT, ["--fast-data", "--compile"])]
    report = {"settings": vars(args), "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, code, extra) in enumerate(arms):
            report["arms"][name] = row = arm(code, args, extra, Path(tmp) / str(i))
            print(f"{name:<34}{row['epoch_s']:>8.1f} s/epoch  ({row['n_train']} + {row['n_valid']} images, "
                  f"{row['precision']})", flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    first = next(iter(report["arms"].values()))["epoch_s"]
    for name, row in report["arms"].items():
        row["speedup"] = first / row["epoch_s"]
        print(f"{name:<34}{row['speedup']:>8.2f}x")
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
