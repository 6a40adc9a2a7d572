"""Claim 6 of the chapter: residual branches whose last BatchNorm starts at gamma 0 train stably at higher
learning rates than with gamma 1. Trains one experiment at several learning rates, with and without, and
plots final accuracy and training loss against the learning rate.

    python scripts/zero_gamma_sweep.py --data ../shared/data/imagenette2-160 --out results/zero_gamma
"""

import argparse
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

import resnets


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--experiment", default="resnet18")
    p.add_argument("--lrs", default="3e-3,3e-2,1e-1", help="comma-separated learning rates")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--subset", type=int, nargs=2, default=(100, 50), metavar=("N_TRAIN", "N_VALID"))
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lr in map(float, a.lrs.split(",")):
        for zero_gamma in (True, False):
            for seed in map(int, a.seeds.split(",")):
                r = resnets.run(a.experiment, data=a.data, size=a.size, presize=round(a.size * 1.25),
                                subset=tuple(a.subset), epochs=a.epochs, lr=lr, seed=seed, zero_gamma=zero_gamma,
                                progress=False, save=False)
                losses = [h["train_loss"] for h in r.history]
                rows.append({"lr": lr, "zero_gamma": zero_gamma, "seed": seed, "accuracy": r.accuracy,
                             "final_train_loss": losses[-1], "max_train_loss": max(losses),
                             "diverged": not all(math.isfinite(x) for x in losses), "seconds": r.wall_time,
                             "settings": r.settings, "versions": r.versions, "device": r.device})
                print(f"lr {lr:g} zero_gamma {zero_gamma} seed {seed}: accuracy {r.accuracy:.4f}, "
                      f"final train loss {losses[-1]:.3f}", flush=True)
                (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    fig = Figure(figsize=(10, 3.8))
    ax_acc, ax_loss = fig.subplots(1, 2)
    def mean(key, lr, zg):
        vals = [r[key] for r in rows if r["lr"] == lr and r["zero_gamma"] == zg]
        return sum(vals) / len(vals)

    lrs = sorted({r["lr"] for r in rows})
    for zg, style in ((True, "o-"), (False, "s--")):
        label = f"last BN gamma = {0 if zg else 1}"
        ax_acc.plot(lrs, [mean("accuracy", lr, zg) for lr in lrs], style, label=label)
        ax_loss.plot(lrs, [mean("final_train_loss", lr, zg) for lr in lrs], style, label=label)
    for ax, name in ((ax_acc, "final validation accuracy"), (ax_loss, "final training loss")):
        ax.set(xscale="log", xlabel="max learning rate (one-cycle)", ylabel=name, title=f"{a.experiment}: {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "zero_gamma.png", dpi=100)


if __name__ == "__main__":
    main()
