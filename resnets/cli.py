"""The `resnets` command line: its parser (the settings' options made from the record), and `main`, which calls the
command's function (resnets.commands) and answers its mistakes in one line.

  resnets list
  resnets run resnet18 [--data PATH|name] [--epochs N] [--size PX] [--subset N] [--out DIR] ...
  resnets lr-find cnn --out DIR
  resnets compare runs/cnn-* runs/res_cnn-*
  resnets study degradation [--data PATH] [--out DIR] [--seeds 1,2] [--epochs N] ...
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from . import commands
from .commands import COMMAND_OPTIONS
from .config import Experiment
from .errors import InputError, RunExists, one_line
from .recipes import EXPERIMENTS, STUDIES

__all__ = ["main", "parser", "add_options", "COMMAND_OPTIONS"]


class _Parser(argparse.ArgumentParser):
    "argparse's parser, whose mistakes are one line naming the problem (and --help for the rest), not the usage."

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_options(p: argparse.ArgumentParser, only=None, skip=()) -> None:
    """The experiment settings as options, made from the `Experiment` record's fields (flag, type, help), in the
    record's groups: only those the user gives reach `run` (argparse.SUPPRESS), so every other one keeps the
    experiment's value."""
    groups = {}
    for f in fields(Experiment):
        md = f.metadata
        if not md.get("option") or f.name in skip or (only is not None and f.name not in only):
            continue
        if md["group"] not in groups:
            groups[md["group"]] = p.add_argument_group(f"{md['group']} settings")
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, **md["cli"])
        if md["type"] is bool:
            kw.update(action=argparse.BooleanOptionalAction)
        else:
            kw.update(type=md["type"])
        if md["renamed_from"]:
            kw.update(action=type("Renamed", (_Renamed,), {"old": md["renamed_from"]}))
        groups[md["group"]].add_argument(flag, *md["renamed_from"], help=md["help"], **kw)


class _Renamed(argparse._StoreAction):
    "An option's value stored; given by an earlier flag (`old`), a line says its new name (the old one still works)."

    old: tuple[str, ...] = ()

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            print(f"resnets: {option_string} is now {self.option_strings[0]} ({option_string} still works, for "
                  "now)", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def _values_kept(argv: list[str]) -> list[str]:
    """`--lr -1e-3` as `--lr=-1e-3`: argparse reads a value that starts with '-' as an option, unless it looks like
    a plain negative integer or decimal; the record then answers a negative value in one line."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a.startswith("--") and "=" not in a and nxt is not None and nxt.startswith("-") and _is_number(nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="resnets", description="The ResNets chapter of the fastai book, runnable.")
    names = "{list,run,lr-find,compare,interpret,study,export,app,push,predict,bench,cache}"
    sub = top.add_subparsers(dest="command", required=True, metavar=names, parser_class=_Parser)
    p = sub.add_parser("list", help="the chapter's experiments and the book's results, and the studies")
    p.add_argument("--all", action="store_true", help="also the earlier versions of the recipes (speedrun-v1, ...)")
    p = sub.add_parser("run", help="train an experiment, then compare with the book",
                       description="Every setting not given keeps the experiment's own (`resnets list` shows them).")
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    add_options(p, only=COMMAND_OPTIONS["run"])
    p.add_argument("--out", help="folder for results.json and results.png (default: runs/NAME-TIME)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only when writing to a terminal)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p = sub.add_parser("lr-find", help="run fastai's learning-rate finder and save its plot")
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    add_options(p, only=COMMAND_OPTIONS["lr-find"])
    p.add_argument("--out", default=".", help="folder for lr_find.png (default: current folder)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only when writing to a terminal)")
    p = sub.add_parser("compare", help="a table of several runs against the book")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or results.json files")
    p = sub.add_parser("interpret", help="redraw a run's confusion matrix and top losses, and print its per-class "
                       "accuracy")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("-k", type=int, default=9, help="how many of the worst-predicted images to show (default 9)")
    p.add_argument("--data", help="the run's images, if they have moved since it was trained")
    p = sub.add_parser("study", help="run a study (several experiments compared): " + ", ".join(STUDIES))
    p.add_argument("name", choices=list(STUDIES), metavar="NAME", help=f"one of: {', '.join(STUDIES)}")
    p.add_argument("--out", help="folder for the runs, study.json and study.png (default: runs/study-NAME); "
                   "running again with the same folder reuses its finished runs")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated seeds")
    add_options(p, only=COMMAND_OPTIONS["study"])  # every arm's setting, when given
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only when writing to a terminal)")
    p = sub.add_parser("export", help="write a run's trained model, class names and preprocessing to one file")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("--out", help="the model file (default: RUN_DIR/model.resnets)")
    p.add_argument("--torchscript", metavar="FILE", help="also a TorchScript file of the network")
    p.add_argument("--timm", metavar="DIR", help="also the folder timm's save_for_hf writes (model.safetensors, "
                   "config.json): timm.create_model('local-dir:DIR', pretrained=True) loads it")
    p.add_argument("--onnx", metavar="FILE", help="also an ONNX file (class names and preprocessing in its metadata; "
                   "`resnets predict FILE.onnx` runs it with onnxruntime)")
    p.add_argument("--check", nargs="*", default=[], metavar="IMAGE",
                   help="images on which the TorchScript / ONNX outputs are compared with the model's")
    p.add_argument("--space", metavar="DIR", help="also a folder that is a Hugging Face Space: app.py (the `resnets "
                   "app` page), the model, requirements.txt pinned, a README with front matter")
    p = sub.add_parser("app", help="a web page for a trained model: drop photos, see their top-5 classes (Gradio)")
    p.add_argument("source", metavar="RUN_DIR|MODEL_FILE", help="a `resnets run` --out folder, or a file from "
                   "`resnets export` (.resnets or .onnx)")
    p.add_argument("--port", type=int, default=7860, help="the port on 127.0.0.1 (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--onnx", action="store_true", help="serve the run's ONNX export with onnxruntime (written if "
                   "missing); used without this flag too when the run has one")
    p.add_argument("--threads", type=int, help="threads the network runs on (default: half the cores)")
    p = sub.add_parser("push", help="upload a run to the Hugging Face Hub for timm (export --timm, and a model card)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("repo_id", metavar="USER/NAME", help="the Hub repository (made if it does not exist)")
    p.add_argument("--private", action="store_true", help="make the repository private")
    p = sub.add_parser("predict", help="the top-5 classes of images, with names and probabilities")
    p.add_argument("model", metavar="MODEL", help="a file written by `resnets export` (.resnets, or .onnx: run by "
                   "onnxruntime)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them (searched recursively)")
    p.add_argument("-k", type=int, default=5, help="how many classes to show (default 5, at least 1)")
    p.add_argument("--csv", metavar="FILE", help="also write one row per image: its path, then the top k classes' "
                   "names and probabilities")
    p.add_argument("--threads", type=int, help="threads the network runs on (default: torch's, every core); "
                   "`resnets app` answers to the last bit as this does with its own --threads")
    p = sub.add_parser("bench", help="benchmarks: all (the suite), models, data, epoch, profile, loop, conv1x1")
    p.add_argument("what", choices=["all", "models", "data", "epoch", "profile", "loop", "conv1x1"],
                   help="all: matmul peak, model steps, data and epoch throughput, as a table and JSON; loop: an "
                   "experiment's own training loop beside its model's step alone and the matmul peak, as fractions "
                   "of the peak")
    p.add_argument("--models", help="comma-separated model names (default: resnet18,resnet34,resnet50 for `models`; "
                   "for `all`, the chapter's five at their chapter sizes)")
    p.add_argument("--size", type=int, help="image size for `models` (default 128) and `loop` (default: the "
                   "experiment's)")
    p.add_argument("--presize", type=int, help="for `loop`: the presize (default: the experiment's)")
    p.add_argument("--compile", action="store_true", help="for `loop`: the library's loop with --compile (its "
                   "compiling is in the warm-up batches, not timed)")
    p.add_argument("--bs", type=int, default=32, help="batch size for model steps")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--variants", default="eager,channels_last",
                   help="model step variants: eager, channels_last, compile (comma-separated)")
    add_options(p, only=COMMAND_OPTIONS["bench"])
    p.add_argument("--data-bs", type=int, default=128, help="batch size for `data`, `epoch` and `all` (default 128)")
    p.add_argument("--experiment", default="cnn", help="experiment timed by `epoch`, `profile` and `all`")
    p.add_argument("--epochs", type=int, default=1, help="epochs per pipeline for `epoch`")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--out", help="also write the report as JSON here")
    p = sub.add_parser("cache", help="list the fast path's image caches ($RESNETS_CACHE), or remove them")
    p.add_argument("--prune", action="store_true", help="remove the least recently used down to the size limit "
                   "($RESNETS_CACHE_LIMIT, GB; or --limit), and those of earlier versions")
    p.add_argument("--limit", type=float, help="the size to prune down to, in GB (default $RESNETS_CACHE_LIMIT or 20)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: also remove those unused for DAYS")
    p.add_argument("--clear", action="store_true", help="remove every cache (they are rebuilt when next needed)")
    for name, p in sub.choices.items():  # what main calls for each command: resnets.commands.cmd_NAME
        p.set_defaults(func=getattr(commands, "cmd_" + name.replace("-", "_")))
    return top


def _resume_command(argv: list[str], folder) -> str:
    "The command line that continues the run in `folder`: this one, with --out FOLDER and --resume."
    import shlex

    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--resume"):
            skip = a == "--out"
        elif not a.startswith("--out="):
            kept.append(a)
    return shlex.join(["resnets", *kept, "--out", str(folder), "--resume"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(_values_kept(argv))
    # a data set that cannot be downloaded: the error names this very command with --data
    drop = {j for i, a in enumerate(argv) if a == "--data" or a.startswith("--data=")
            for j in ((i, i + 1) if a == "--data" else (i,))}
    shown = " ".join(a.replace("{", "{{").replace("}", "}}") for i, a in enumerate(argv) if i not in drop)
    hint_given = "RESNETS_DATA_HINT" in os.environ  # (make run sets its own)
    os.environ.setdefault("RESNETS_DATA_HINT", f"resnets {shown} --data /path/to/{{folder}}")
    try:
        return _command(args, argv)
    finally:  # main() called in-process (a notebook, the tests): the next call or get_data() must not see this one's
        if not hint_given:
            os.environ.pop("RESNETS_DATA_HINT", None)


def _command(args, argv: list[str]) -> int:
    "What `main` does, once the command line is parsed: one command, its mistakes as one line."
    try:
        args.func(args)
    except RunExists as e:
        more = f"; to continue it: {_resume_command(argv, e.folder)}" if e.unfinished else ""
        print(f"resnets {args.command}: error: {e}{more}", file=sys.stderr)
        return 2
    except (InputError, MemoryError) as e:  # bad input (any other exception is a bug: keep its traceback)
        print(f"resnets {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line, and the way back when there is one
        folder = getattr(e, "folder", None)
        why = str(e).split(":")[0] if str(e) else "interrupted"
        more = f"; continue with: {_resume_command(argv, folder)}" if folder is not None else ""
        print(f"\nresnets {args.command}: {why}{more}", file=sys.stderr)
        return 130
    return 0
