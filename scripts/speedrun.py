"""Time recipes as a user runs them: `resnets run RECIPE --seed S`, one command per seed, from its start.

    python scripts/speedrun.py OUT --recipe speedrun --seeds 0 1 2 [--data PATH] [--target 0.757] [-- MORE OPTIONS]
    (e.g. `-- --fast-data`: any further options go to `resnets run` as they are)

Each seed runs in its own process with an empty image cache (so decoding the images is timed too) and
writes OUT/<label>-seed<S>/. The wall time is the command's, from its start to its exit after printing the
final accuracy. The time a run first passed the target is that command's start-up time (the command's wall
time minus the run's own) plus the run's elapsed time at the end of the first epoch scored at or above the
target; if only the final flip-TTA score passes, it is the whole command's time.

Every row is appended to OUT/speedrun.json (with the machine and versions), and OUT/speedrun.png plots
accuracy against wall-clock seconds for every run there, so recipes timed by separate calls (the
chapter's, a speedrun) share one plot. Run it with nothing else heavy on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def time_run(recipe: str, seed: int, out: Path, data: str | None, extra: list[str], target: float) -> dict:
    folder, cache = out / f"{recipe}-seed{seed}", out / f"cache-{recipe}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "resnets", "run", recipe, "--seed", str(seed), "--out", str(folder), "--no-progress",
           *(["--data", data] if data else []), *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "RESNETS_CACHE": str(cache)})
    wall = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    r = json.loads((folder / "results.json").read_text())
    startup = wall - r["wall_time"]
    curve = [(startup + h["elapsed"], h["accuracy"]) for h in r["history"] if h["accuracy"] is not None]
    final = r.get("tta_accuracy") or r["history"][-1]["accuracy"]
    passed = next((t for t, a in curve if a >= target), wall if final >= target else None)
    return {"label": recipe + (" " + " ".join(extra) if extra else ""), "recipe": recipe, "seed": seed,
            "command": " ".join(["resnets", *cmd[3:]]), "wall_s": round(wall, 1), "startup_s": round(startup, 1),
            "accuracy": r["history"][-1]["accuracy"], "tta_accuracy": r.get("tta_accuracy"),
            "first_past_target_s": None if passed is None else round(passed, 1), "target": target,
            "curve": [(round(t, 1), a) for t, a in curve], "settings": r["settings"], "device": r["device"],
            "versions": r["versions"]}


def plot(rows: list[dict], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnets.results import save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {}
    for r in rows:
        c = colours.setdefault(r["label"], f"C{len(colours)}")
        t, a = zip(*r["curve"])
        ax.plot(t, a, "o-", color=c, ms=3, lw=1, label=r["label"] if r["seed"] == min(
            x["seed"] for x in rows if x["label"] == r["label"]) else None)
        if r.get("tta_accuracy"):
            ax.plot([t[-1], r["wall_s"]], [a[-1], r["tta_accuracy"]], ":", color=c, lw=1)
            ax.plot([r["wall_s"]], [r["tta_accuracy"]], "*", color=c, ms=8)
    times = [t for r in rows for t, _ in r["curve"]]
    if max(times) > 10 * min(times):  # minutes-long recipes beside much longer ones
        ax.set_xscale("log")
    ax.axhline(target, color="grey", ls="--", lw=1)
    ax.text(min(times), target + 0.005, f"the book's ResNet-18: {target:.1%}", color="grey", fontsize=8)
    ax.set(xlabel="wall-clock seconds from the command's start", ylabel="validation accuracy",
           title="Accuracy against time on this machine (each epoch; * = final score with flip TTA)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--recipe", default="speedrun")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data")
    p.add_argument("--target", type=float, default=0.757, help="accuracy whose first passing is timed")
    a, extra = p.parse_known_args(argv)  # the rest: more `resnets run` options (after --, or as they are)
    a.extra = [x for x in extra if x != "--"]
    a.out.mkdir(parents=True, exist_ok=True)
    from resnets.results import versions

    summary = a.out / "speedrun.json"
    rows = json.loads(summary.read_text())["runs"] if summary.exists() else []
    for seed in a.seeds:
        row = time_run(a.recipe, seed, a.out, a.data, a.extra, a.target)
        rows = [r for r in rows if (r["label"], r["seed"]) != (row["label"], row["seed"])] + [row]
        summary.write_text(json.dumps({"machine": row["device"], "cpus": os.cpu_count(), "versions": versions(),
                                       "runs": rows}, indent=1))
        plot(rows, a.out / "speedrun.png", a.target)
        print(f"{row['label']} seed {seed}: {row['accuracy']:.4f} (TTA {row['tta_accuracy']}) in {row['wall_s']} s; "
              f"first past {a.target:.1%} at {row['first_past_target_s']} s", flush=True)


if __name__ == "__main__":
    main()
