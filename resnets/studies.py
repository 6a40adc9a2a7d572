"""The chapter's claims as studies: several registered experiments, run side by side and compared.

A `Study` is a list of arms, each a registered experiment with a few options changed (a learning
rate, `zero_gamma=False`, label smoothing ...), run for one or more seeds. `run_study` trains every
arm with `run()`, keeps each run's folder (`out/<arm>-seed<N>/results.json`), and writes
`study.json` (a row per arm: final losses and accuracy, mean and per seed, and the model's size
and counted FLOPs) and `study.png` (the per-epoch curves the claim is about, one line per arm).
An interrupted study picks up where it stopped: finished runs are read back, not trained again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .bench import bench_models
from .checkpoint import find_checkpoint
from .errors import InputError
from .files import atomic_write
from .models import count_flops, create_model
from .precision import choose_precision
from .recipes import STUDIES, Arm, Study, configure, get_study, list_studies
from .results import Results, load_results, save_figure
from .training import run

__all__ = ["Arm", "Study", "STUDIES", "get_study", "list_studies", "run_study", "StudyResults"]


@dataclass
class StudyResults:
    "What a study found: one row per arm (means over seeds, and each seed's values), and the runs themselves."

    study: str
    claim: str
    rows: list[dict]
    runs: dict[str, list[Results]] = field(default_factory=dict, repr=False)  # arm label -> one Results per seed
    curve: str = "train_loss"
    folder: str | None = None

    def table(self) -> str:
        "A Markdown table: final training and validation loss, accuracy (mean over seeds), size and compute."
        extra = "throughput_images_per_s" in (self.rows[0] if self.rows else {})
        head = ["arm", "seeds", "train loss", "valid loss", "accuracy", "params", "GFLOPs/img", "s/epoch"]
        head += ["img/s (synthetic step)"] if extra else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["arm"], str(len(r["seeds"])), f"{r['train_loss']:.3f}", f"{r['valid_loss']:.3f}",
                     f"{r['accuracy']:.4f}", f"{r['params']:,}", f"{r['gflops_per_image']:.3f}",
                     f"{r['epoch_time']:.0f}"]
            cells += [f"{r['throughput_images_per_s']:.1f}"] if extra else []
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self) -> Figure:
        "Per epoch, mean over seeds: the claim's curve (e.g. training loss) and validation accuracy, one line per arm."
        fig = Figure(figsize=(11, 4))
        ax_curve, ax_acc = fig.subplots(1, 2)
        for label, runs in self.runs.items():
            n = min(len(r.history) for r in runs)
            epochs = range(1, n + 1)
            style = "--" if label.startswith(("plain", "gamma 1")) else "-"
            for ax, key in ((ax_curve, self.curve), (ax_acc, "accuracy")):
                ax.plot(epochs, [_mean(r.history[i].get(key) for r in runs) for i in range(n)], style, marker="o",
                        ms=3, label=label)
        name = self.curve.replace("_", " ")
        ax_curve.set(xlabel="epoch", ylabel=name, title=f"{self.study}: {name}")
        ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title=f"{self.study}: accuracy")
        for ax in (ax_curve, ax_acc):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "runs"}
        data["runs"] = {label: [r.folder for r in runs] for label, runs in self.runs.items()}
        path = folder / "study.json"
        atomic_write(path, json.dumps(data, indent=2).encode())
        if self.runs:
            save_figure(self.plot(), folder / "study.png")
        return path


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else math.nan


def _run_arm(arm: Arm, seed: int, folder: Path, overrides: dict, progress: bool) -> Results:
    "Train one arm for one seed into `folder`, or read it back if an earlier call finished it."
    if (folder / "results.json").exists():
        done = load_results(folder)
        if done.finished:
            print(f"resnets: {folder} is finished: reusing it")
            return done
        if find_checkpoint(folder):  # interrupted after an epoch: continue from its last checkpoint
            return run(arm.experiment, **{**arm.options, **overrides}, seed=seed, out=folder, progress=progress,
                       resume=True)
        shutil.rmtree(folder)  # interrupted before its first checkpoint: train it again from the start
    return run(arm.experiment, **{**arm.options, **overrides}, seed=seed, out=folder, progress=progress)


def _compute(arm: Arm, overrides: dict, throughput: bool) -> dict:
    "Parameters and counted forward FLOPs per image of an arm's model at its size (and step throughput)."
    opts = {**arm.options, **overrides}
    exp = configure(arm.experiment, verbose=False, **opts)
    model = create_model(exp.model, n_out=10, width=exp.width, stem=exp.stem)
    row = {"model": exp.model, "size": exp.size, "params": sum(p.numel() for p in model.parameters()),
           "gflops_per_image": count_flops(model, exp.size) / 1e9}
    if throughput:  # where and in the precision the arm's run trains (a GPU's fp16; this CPU's bf16 or fp32)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        precision, _ = choose_precision(exp.precision, device)
        bench = bench_models([exp.model], size=exp.size, bs=32, repeats=5, device=device, precision=precision)[0]
        row.update(throughput_images_per_s=bench["train_images_per_s"], throughput_device=device,
                   throughput_precision=precision)
    return row


def run_study(
    name: str | Study,
    out: str | os.PathLike,
    seeds: tuple[int, ...] | list[int] | None = None,
    progress: bool = False,
    **overrides,
) -> StudyResults:
    """Run every arm of a study for each seed into `out/<arm>-seed<N>/`, then write study.json and study.png.

    `overrides` (any experiment setting but the seed: data, epochs, size, subset, fast_data ...) apply to every
    arm, e.g. a tiny subset for a quick look. Finished runs already in `out` are reused, not trained again.
    """
    study = get_study(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}  # None: keep each arm's own setting
    seeds = tuple(study.seeds if seeds is None else seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise InputError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    for arm in study.arms:  # every arm's settings checked before the first one trains
        configure(arm.experiment, verbose=False, **{**arm.options, **overrides})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = StudyResults(study.name, study.claim, [], {}, study.curve, str(out))
    for i, arm in enumerate(study.arms, 1):
        runs = []
        for seed in seeds:
            print(f"resnets: study {study.name}, arm {i}/{len(study.arms)} ({arm.label}), seed {seed}", flush=True)
            slug = "".join(c if c.isalnum() or c in "-." else "_" for c in arm.label)
            runs.append(_run_arm(arm, seed, out / f"{slug}-seed{seed}", overrides, progress))
        found.runs[arm.label] = runs
        last = [r.history[-1] for r in runs]
        means = {k: _mean(h.get(k) for h in last) for k in ("train_loss", "valid_loss", "accuracy", "top_5_accuracy")}
        options = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in {**arm.options, **overrides}.items()}
        row = {"arm": arm.label, "experiment": arm.experiment, "options": options,
               "seeds": list(seeds), **means, "per_seed": [{"seed": s, **h} for s, h in zip(seeds, last)],
               "epoch_time": _mean(r.epoch_time for r in runs)}
        row.update(_compute(arm, overrides, study.throughput))
        found.rows.append(row)
        found.save(out)  # after every arm, so an interrupted study keeps a table of what it finished
    return found
