"""The results of a run: per-epoch history, what produced it, and how it compares with the book.

A run folder holds `results.json` (rewritten atomically after every epoch, so an interrupted run
keeps what it finished) and `results.png` (accuracy and losses per epoch beside the book's curve).
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import statistics
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import __version__
from .config import CHAPTER_BS, DATA_SETS, OPTIONS
from .errors import InputError, MissingFile
from .files import atomic_write
from .recipes import EXPERIMENTS

__all__ = ["BOOK_NEUTRAL", "Results", "save_figure", "versions", "describe_device", "load_results",
           "compare"]


_GLYPH = re.compile(r"Glyph \d+ \((.+?)\) missing from font\(s\) (.+?)\.?$")


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """A matplotlib figure as a PNG at `path`, written atomically like every other output. Characters the font lacks
    (class names in another script) are one line, not a warning per glyph and draw."""
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    missing, fonts = {}, set()
    for w in caught:
        m = _GLYPH.match(str(w.message))
        if m is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # any other warning, as it was
            continue
        missing[m[1]] = None
        fonts.add(m[2])
    if missing:
        print(f"resnets: {path.name}: {len(missing)} character(s) of the labels are not in the font "
              f"({', '.join(sorted(fonts))}) and show as boxes; set matplotlib's rcParams['font.family'] to a font "
              "that has them")
    atomic_write(path, buf.getvalue())


def versions() -> dict:
    "The versions of what produced a result."
    import fastai
    import torch
    import torchvision

    return {"resnets": __version__, "fastai": fastai.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def describe_device(device) -> str:
    "A short human description of the device a run trained on."
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # the vector instructions torch's kernels use here (AVX2, AVX512, ...): two CPUs of one name can differ in them,
    # and with them the speed and the last digits of a seeded run
    return f"cpu: {cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"


@dataclass
class Results:
    "One run: settings, seed, per-epoch history (train/valid loss, metrics, seconds), versions, device."

    experiment: str
    settings: dict
    seed: int | None
    history: list[dict] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    device: str = ""
    wall_time: float = 0.0
    book: dict = field(default_factory=dict)  # the chapter's per-epoch accuracy / valid_loss, epoch_time
    finished: bool = False
    folder: str | None = None  # where it was saved
    tta_accuracy: float | None = None  # the final model's, with flip test-time augmentation (`tta`)
    per_class_accuracy: dict = field(default_factory=dict)  # the final model's, by class name (resnets.interpret)
    # The trained fastai Learner, in the process that trained it (not saved): show_results, Interpretation, predict.
    learn: object = field(default=None, repr=False, compare=False)

    @property
    def accuracy(self) -> float | None:
        "Final-epoch validation accuracy (the leaderboard's convention: last epoch, not best)."
        return self.history[-1].get("accuracy") if self.history else None

    @property
    def size(self) -> int | None:
        "The training image size (`resize` in results written before version 0.2)."
        return self.settings.get("size", self.settings.get("resize"))

    @property
    def epoch_time(self) -> float | None:
        "Median seconds per epoch (train + validate)."
        return statistics.median(h["time"] for h in self.history) if self.history else None

    def book_differences(self) -> list[str]:
        """The settings of this run that are not the book's (for an experiment the book ran), as "name value (book
        value)": a 3-class, 20-image run, or one on other data or another network, is not compared with the book's
        figure. Every option counts except those that leave the compared accuracy alone (`BOOK_NEUTRAL`: the
        pipeline, precision, seed, epochs ...); settings a results file does not record are not counted."""
        exp, s = EXPERIMENTS.get(self.experiment), self.settings
        if exp is None or not exp.book_accuracy:
            return []
        now = {**s, "size": self.size}
        diffs = []
        for k in OPTIONS:
            if k in BOOK_NEUTRAL or k not in now:
                continue
            mine, book = now[k], getattr(exp, k)
            if k == "bs":  # left open (None): the chapter's 128 on the chapter's data
                mine, book = mine or CHAPTER_BS, book or CHAPTER_BS
            if k == "data":  # a name, or the folder it extracts to (the project's local copy is the same data)
                mine = s.get("source", mine)
                if mine == book or Path(str(mine)).name == DATA_SETS.get(book):
                    continue
            elif (tuple(mine) if isinstance(mine, list) else mine) == book:
                continue
            diffs.append(f"{k} {mine} (book {'all' if book is None else book})")
        if now.get("n_classes") not in (None, 10):
            diffs.append(f"{now['n_classes']} classes (book 10)")
        return diffs

    @property
    def book_accuracy(self) -> float | None:
        """The book's accuracy at this run's last epoch (its final one if this run is longer); None when the book
        has no figure for the experiment or this run's settings are not the book's (`book_differences`)."""
        book, n = self.book.get("accuracy") or [], len(self.history)
        return book[min(n, len(book)) - 1] if book and n and not self.book_differences() else None

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "learn"}, indent=2)

    def save(self, folder: str | os.PathLike, plot: bool = True) -> Path:
        "Write results.json (and results.png) into `folder`, atomically; returns the JSON's path."
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "results.json"
        atomic_write(path, self.to_json().encode())
        if plot and self.history:
            save_figure(self.plot(), folder / "results.png")
        return path

    def plot(self) -> Figure:
        "Accuracy and losses per epoch, with the book's curve where it has one."
        fig = Figure(figsize=(10, 3.8))
        ax_acc, ax_loss = fig.subplots(1, 2)
        epochs = [h["epoch"] + 1 for h in self.history]
        nan = lambda k: [float("nan") if h.get(k) is None else h[k] for h in self.history]  # noqa: E731  (skipped)
        ax_acc.plot(epochs, nan("accuracy"), "o-", label="this run")
        ax_loss.plot(epochs, [h["train_loss"] for h in self.history], "o-", label="train (this run)")
        ax_loss.plot(epochs, nan("valid_loss"), "o-", label="valid (this run)")
        if self.book.get("accuracy"):
            book_epochs = range(1, len(self.book["accuracy"]) + 1)
            ax_acc.plot(book_epochs, self.book["accuracy"], "s--", color="grey", label="book")
        if self.book.get("valid_loss"):  # the book prints none for ResNet-50
            book_epochs = range(1, len(self.book["valid_loss"]) + 1)
            ax_loss.plot(book_epochs, self.book["valid_loss"], "s--", color="grey", label="valid (book)")
        ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title=f"{self.experiment}: accuracy")
        ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{self.experiment}: losses")
        for ax in (ax_acc, ax_loss):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def summary(self) -> str:
        "One line: final accuracy and time per epoch against the book's."
        if not self.history:
            return f"{self.experiment}: no epoch finished"
        line = (
            f"{self.experiment}: accuracy {self.accuracy:.4f} after {len(self.history)} epoch(s) "
            f"at {self.size} px, {self.epoch_time:.1f} s/epoch on {self.device}"
        )
        ref, differ = self.book_accuracy, self.book_differences()
        if differ:
            line += f" | not compared with the book (settings differ: {', '.join(differ)})"
        elif ref is not None:
            n, n_book = len(self.history), len(self.book["accuracy"])
            at = f"epoch {n}" if n <= n_book else f"{n_book} epochs"
            line += f" | book: {ref:.4f} at {at} ({100 * (self.accuracy - ref):+.1f} points)"
            if self.book.get("epoch_time"):
                line += f", {self.book['epoch_time']} s/epoch on a 2020 GPU"
        if self.tta_accuracy is not None:
            line += f" | with flip TTA {self.tta_accuracy:.4f}"
        if self.finished and self.wall_time:
            line += f" | {self.wall_time:.0f} s in all"
        if not self.finished:
            line += " [unfinished]"
        return line


# The options that leave a run's compared accuracy as the book's: how the data are loaded and the machine's side
# (precision, seed, workers, determinism), the run's length (compared at the same epoch; a budget sets it), which
# epochs are validated and the extra TTA score, and two data options that do nothing for a train/ val/ folder.
BOOK_NEUTRAL = frozenset({"fast_data", "precision", "seed", "num_workers", "deterministic", "compile", "epochs",
                          "budget", "valid_last", "tta", "valid_pct", "label_col", "log"})


def load_results(path: str | os.PathLike) -> Results:
    "Read a results.json, or the one inside a run folder."
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise MissingFile(f"no results at {path}: pass a run folder (with results.json) or the file itself")
    try:
        return Results(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise InputError(f"{path} is not a resnets results file ({e})") from e


def compare(runs: list[Results | str | os.PathLike]) -> str:
    """A text table of several runs against the book: run folder, final accuracy, the book's at the same epoch and
    the difference (only where the settings are the book's; a note says which differ), seconds per epoch."""
    rows = [(str(r), load_results(r)) if not isinstance(r, Results) else (r.folder or "-", r) for r in runs]
    width = max([len("run"), *(len(f) for f, _ in rows)])
    head = (f"{'run':<{width}}  {'experiment':<16}{'epochs':>7}{'size':>6}{'accuracy':>10}{'book':>8}{'diff':>8}"
            f"{'s/epoch':>9}  device")
    lines, notes = [head, "-" * len(head)], []
    dash = "\u2013"  # "–": nothing to show
    for folder, r in rows:
        acc, ref, t = r.accuracy, r.book_accuracy, r.epoch_time
        def cell(v, fmt: str, w: int) -> str:
            return f"{dash:>{w}}" if v is None else f"{format(v, fmt):>{w}}"
        diff = 100 * (acc - ref) if acc is not None and ref is not None else None
        lines.append(f"{folder:<{width}}  {r.experiment:<16}{len(r.history):>7}{r.size or dash:>6}"
                     f"{cell(acc, '.4f', 10)}{cell(ref, '.4f', 8)}{cell(diff, '+.1f', 8)}{cell(t, '.1f', 9)}  "
                     f"{r.device or dash}")
        differ = r.book_differences()
        if differ:
            notes.append(f"{folder}: not the book's settings, so not compared: {', '.join(differ)}")
    return "\n".join(lines + ([""] + notes if notes else []))
