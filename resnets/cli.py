"""The `resnets` command: list, run, lr-find and compare the chapter's experiments.

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
from pathlib import Path

from .config import (
    GROUPS,
    OPTION_GROUPS,
    Experiment,
    check_run_folder,
    check_source,
    csv_columns,
    is_weights_path,
)
from .errors import InputError, MissingFile, RunExists, check_number, one_line, printable
from .recipes import ALIASES, EXPERIMENTS, STUDIES, configure, get_study

__all__ = ["main", "parser", "add_options", "COMMAND_OPTIONS"]

# torch and fastai take seconds to import: the record (resnets.config) and the recipes import neither, so every
# setting and the data's path are checked first, and only a command that trains or reads runs imports the heavy
# modules, inside it; `--help` and a mistake answer at once.

# The settings each command takes, by the record's groups (resnets.config.GROUPS).
COMMAND_OPTIONS: dict[str, tuple[str, ...]] = {
    "run": tuple(k for g in GROUPS for k in OPTION_GROUPS[g]),
    # lr_find trains a few hundred batches of the model on the data: no schedule but the optimiser, no evaluation
    "lr-find": (*OPTION_GROUPS["model"], *OPTION_GROUPS["data"], "opt", "label_smoothing", "mixup",
                *OPTION_GROUPS["runtime"]),
    "study": tuple(k for g in GROUPS for k in OPTION_GROUPS[g] if k not in ("seed", "model")),  # every arm's
    "bench": ("data", "subset"),  # the real images for `data`, `epoch`, `profile` and `all`
}  # fmt: skip


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
    commands = "{list,run,lr-find,compare,interpret,study,export,app,push,predict,bench,cache}"
    sub = top.add_subparsers(dest="command", required=True, metavar=commands, parser_class=_Parser)
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
                       "accuracy")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("-k", type=int, default=9, help="how many of the worst-predicted images to show (default 9)")
    p.add_argument("--data", help="the run's images, if they have moved since it was trained")
    p = sub.add_parser("study", help="run a study (several experiments compared): " + ", ".join(STUDIES))
    p.add_argument("name", choices=list(STUDIES), metavar="NAME", help=f"one of: {', '.join(STUDIES)}")
    p.add_argument("--out", help="folder for the runs, study.json and study.png (default: runs/study-NAME); "
                   "running again with the same folder reuses its finished runs")  # fmt: skip
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated seeds")
    add_options(p, only=COMMAND_OPTIONS["study"])  # every arm's setting, when given
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only when writing to a terminal)")  # fmt: skip
    p = sub.add_parser("export", help="write a run's trained model, class names and preprocessing to one file")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("--out", help="the model file (default: RUN_DIR/model.resnets)")
    p.add_argument("--torchscript", metavar="FILE", help="also a TorchScript file of the network")
    p.add_argument("--timm", metavar="DIR", help="also the folder timm's save_for_hf writes (model.safetensors, "
                   "config.json): timm.create_model('local-dir:DIR', pretrained=True) loads it")  # fmt: skip
    p.add_argument("--onnx", metavar="FILE", help="also an ONNX file (class names and preprocessing in its metadata; "
                   "`resnets predict FILE.onnx` runs it with onnxruntime)")  # fmt: skip
    p.add_argument("--check", nargs="*", default=[], metavar="IMAGE",
                   help="images on which the TorchScript / ONNX outputs are compared with the model's")  # fmt: skip
    p.add_argument("--space", metavar="DIR", help="also a folder that is a Hugging Face Space: app.py (the `resnets "
                   "app` page), the model, requirements.txt pinned, a README with front matter")  # fmt: skip
    p = sub.add_parser("app", help="a web page for a trained model: drop photos, see their top-5 classes (Gradio)")
    p.add_argument("source", metavar="RUN_DIR|MODEL_FILE", help="a `resnets run` --out folder, or a file from "
                   "`resnets export` (.resnets or .onnx)")  # fmt: skip
    p.add_argument("--port", type=int, default=7860, help="the port on 127.0.0.1 (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--onnx", action="store_true", help="serve the run's ONNX export with onnxruntime (written if "
                   "missing); used without this flag too when the run has one")  # fmt: skip
    p.add_argument("--threads", type=int, help="threads the network runs on (default: half the cores)")
    p = sub.add_parser("push", help="upload a run to the Hugging Face Hub for timm (export --timm, and a model card)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a `resnets run`")
    p.add_argument("repo_id", metavar="USER/NAME", help="the Hub repository (made if it does not exist)")
    p.add_argument("--private", action="store_true", help="make the repository private")
    p = sub.add_parser("predict", help="the top-5 classes of images, with names and probabilities")
    p.add_argument("model", metavar="MODEL", help="a file written by `resnets export` (.resnets, or .onnx: run by "
                   "onnxruntime)")  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them (searched recursively)")
    p.add_argument("-k", type=int, default=5, help="how many classes to show (default 5, at least 1)")
    p.add_argument("--csv", metavar="FILE", help="also write one row per image: its path, then the top k classes' "
                   "names and probabilities")  # fmt: skip
    p.add_argument("--threads", type=int, help="threads the network runs on (default: torch's, every core); "
                   "`resnets app` answers to the last bit as this does with its own --threads")  # fmt: skip
    p = sub.add_parser("bench", help="benchmarks: all (the suite), models, data, epoch, profile, loop, conv1x1")
    p.add_argument("what", choices=["all", "models", "data", "epoch", "profile", "loop", "conv1x1"],
                   help="all: matmul peak, model steps, data and epoch throughput, as a table and JSON; loop: an "
                   "experiment's own training loop beside its model's step alone and the matmul peak, as fractions "
                   "of the peak")  # fmt: skip
    p.add_argument("--models", help="comma-separated model names (default: resnet18,resnet34,resnet50 for `models`; "
                   "for `all`, the chapter's five at their chapter sizes)")  # fmt: skip
    p.add_argument("--size", type=int, help="image size for `models` (default 128) and `loop` (default: the "
                   "experiment's)")  # fmt: skip
    p.add_argument("--presize", type=int, help="for `loop`: the presize (default: the experiment's)")
    p.add_argument("--compile", action="store_true", help="for `loop`: the library's loop with --compile (its "
                   "compiling is in the warm-up batches, not timed)")  # fmt: skip
    p.add_argument("--bs", type=int, default=32, help="batch size for model steps")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--variants", default="eager,channels_last",
                   help="model step variants: eager, channels_last, compile (comma-separated)")  # fmt: skip
    add_options(p, only=COMMAND_OPTIONS["bench"])
    p.add_argument("--data-bs", type=int, default=128, help="batch size for `data`, `epoch` and `all` (default 128)")
    p.add_argument("--experiment", default="cnn", help="experiment timed by `epoch`, `profile` and `all`")
    p.add_argument("--epochs", type=int, default=1, help="epochs per pipeline for `epoch`")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--out", help="also write the report as JSON here")
    p = sub.add_parser("cache", help="list the fast path's image caches ($RESNETS_CACHE), or remove them")
    p.add_argument("--prune", action="store_true", help="remove the least recently used down to the size limit "
                   "($RESNETS_CACHE_LIMIT, GB; or --limit), and those of earlier versions")  # fmt: skip
    p.add_argument("--limit", type=float, help="the size to prune down to, in GB (default $RESNETS_CACHE_LIMIT or 20)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with --prune: also remove those unused for DAYS")
    p.add_argument("--clear", action="store_true", help="remove every cache (they are rebuilt when next needed)")
    return top


def _list(everything: bool = False) -> None:
    "The experiments (a recipe under its plain name, the version it runs named; `everything`: the earlier ones too)."
    print(f"{'name':<16}{'model':<16}{'data':<16}{'size':>5}{'epochs':>7}{'book acc':>9}{'s/epoch':>8}  title")
    versions = set(ALIASES.values())  # shown under their plain names
    hidden = [n for n in EXPERIMENTS if _is_version(n) and (n in versions or not everything)]
    for e in EXPERIMENTS.values():
        if e.name in hidden:
            continue
        book = f"{e.book_accuracy[-1]:>9.4f}{e.book_epoch_time:>8}" if e.book_accuracy else f"{'-':>9}{'-':>8}"
        title = f"{e.title} (= {ALIASES[e.name]})" if e.name in ALIASES else e.title
        print(f"{e.name:<16}{e.model:<16}{e.data:<16}{e.size:>5}{e.epochs:>7}{book}  {title}")
    print("(book: final validation accuracy and seconds per epoch on the authors' 2020 GPU)")
    earlier = [n for n in hidden if n not in versions]
    if earlier:
        print(f"earlier versions, which still run under their names: {', '.join(earlier)} (resnets list --all)")
    print("\nstudies (`resnets study NAME`):")
    for st in STUDIES.values():
        print(f"  {st.name:<16}{len(st.arms)} arms x {len(st.seeds)} seed(s): {st.claim}")


def _is_version(name: str) -> bool:
    "A recipe's numbered version (speedrun-v2): the plain name (speedrun) runs the latest."
    base, _, v = name.rpartition("-v")
    return base in ALIASES and v.isdigit()


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


def _unfinished_runs(name: str) -> list[str]:
    "Run folders under runs/ of experiment `name` that hold an unfinished run with a checkpoint."
    import json

    from .checkpoint import find_checkpoint

    found = []
    for f in sorted(Path("runs").glob(f"{name}-*/results.json")):
        try:
            if not json.loads(f.read_text()).get("finished") and find_checkpoint(f.parent):
                found.append(str(f.parent))
        except (OSError, ValueError):
            continue
    return found


def _checked(name: str, kw: dict, options: tuple[str, ...]) -> Experiment:
    "The experiment with the command's settings from `kw` (taken out of it), and its data's path, checked."
    given = {k: kw.pop(k) for k in options if k in kw}
    exp = configure(name, **given)
    check_source(exp.data)
    _check_split(exp, given)
    if exp.init is not None and not Path(exp.init).expanduser().exists():
        raise MissingFile(f"nothing to start from at {exp.init}: pass a run folder (--out of `resnets run`) or a file "
                          "written by `resnets export`")  # fmt: skip
    w = exp.pretrained
    if isinstance(w, str) and is_weights_path(w) and not Path(w).expanduser().exists():
        raise MissingFile(f"no weights at {w}: pass a .safetensors file, a timm hub folder, a timm tag "
                          "(resnet50d.ra2_in1k) or --pretrained alone for the model's default")  # fmt: skip
    return exp


def _check_split(exp: Experiment, given: dict) -> None:
    """What the data's own layout decides, said before torch loads: a CSV's label column that is not there (an
    error), and --valid-pct where the data has its own split (a line: it is not used)."""
    path = Path(str(exp.data)).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        cols = csv_columns(path)
        if exp.label_col is not None and exp.label_col not in cols:
            raise InputError(f"no column {exp.label_col!r} in {path}: its columns are {', '.join(cols)} (choose one "
                             "with --label-col)")  # fmt: skip
        own = "is_valid" in cols and f"{path} has an is_valid column, which splits it"
    else:
        own = path.is_dir() and (path / "train").is_dir() and f"{path} has its own train/ and validation folders"
    if own and "valid_pct" in given:
        print(f"resnets: --valid-pct {exp.valid_pct:g} is not used: {own} (--valid-pct splits a folder of class "
              "folders, or a CSV without is_valid)")  # fmt: skip


def _progress(flag: bool | None) -> bool:
    "Progress bars: as asked, else only when writing to a terminal."
    return sys.stdout.isatty() if flag is None else flag


def _cache(args) -> None:
    "`resnets cache`: the image caches, least recently used first; --prune / --clear remove them."
    from .cache import cache_folder, describe, prune

    folder = cache_folder()
    if args.clear or args.prune:
        limit = 0.0 if args.clear else None if args.limit is None else args.limit * 1e9
        older = None if args.older_than is None else args.older_than * 86400
        removed = prune(folder, limit=limit, older_than=older)
        print(f"removed {len(removed)} cache(s), {sum(c['bytes'] for c in removed) / 1e9:.2f} GB, from {folder}")
    print(describe(folder))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(_values_kept(argv))
    kw = {k: v for k, v in vars(args).items() if k != "command"}
    # a data set that cannot be downloaded: the error names this very command with --data
    drop = {j for i, a in enumerate(argv) if a == "--data" or a.startswith("--data=")
            for j in ((i, i + 1) if a == "--data" else (i,))}  # fmt: skip
    shown = " ".join(a.replace("{", "{{").replace("}", "}}") for i, a in enumerate(argv) if i not in drop)
    hint_given = "RESNETS_DATA_HINT" in os.environ  # (make run sets its own)
    os.environ.setdefault("RESNETS_DATA_HINT", f"resnets {shown} --data /path/to/{{folder}}")
    try:
        return _command(args, argv, kw)
    finally:  # main() called in-process (a notebook, the tests): the next call or get_data() must not see this one's
        if not hint_given:
            os.environ.pop("RESNETS_DATA_HINT", None)


def _command(args, argv: list[str], kw: dict) -> int:
    "What `main` does, once the command line is parsed: one command, its mistakes as one line."
    try:
        if args.command == "list":
            _list(args.all)
        elif args.command == "run":
            if args.resume and not args.out:
                found = _unfinished_runs(args.name)
                raise InputError("--resume continues a run: add --out FOLDER, the folder of the run to continue"
                                 + (f" (unfinished {args.name} runs: {', '.join(found)})" if found else ""))
            exp = _checked(kw.pop("name"), kw, COMMAND_OPTIONS["run"])
            from .training import run

            results = run(exp, out=kw["out"], resume=kw["resume"], progress=_progress(kw["progress"]))
            if results.folder is not None:  # in a distributed run, only rank 0 has a folder and reports
                print(results.summary())
                print(f"saved {results.folder}/results.json and results.png")
        elif args.command == "lr-find":
            exp = _checked(kw.pop("name"), kw, COMMAND_OPTIONS["lr-find"])
            from .training import lr_find

            s = lr_find(exp, out=kw["out"], progress=_progress(kw["progress"]))
            print(f"suggested learning rate: {s.valley:.2e} (valley); plot saved to {args.out}/lr_find.png")
        elif args.command == "study":
            name, out, seeds, progress = kw.pop("name"), kw.pop("out"), kw.pop("seeds"), _progress(kw.pop("progress"))
            for arm in get_study(name).arms:  # every arm's settings, and the data, checked before anything trains
                exp = configure(arm.experiment, verbose=False, **{**arm.options, **kw})
                check_source(exp.data)
            from .studies import run_study

            found = run_study(name, out or f"runs/study-{name}", seeds=seeds, progress=progress, **kw)
            print(found.table())
            print(f"saved {found.folder}/study.json and study.png")
        elif args.command == "export":
            check_run_folder(args.run_dir)  # before torch loads, as every other path the command line is given
            from .deploy import ONNX_OPSET, export, export_onnx, export_torchscript, load

            path = export(args.run_dir, args.out)
            print(f"saved {path}")
            if args.onnx:
                diff = export_onnx(load(path), args.onnx, args.check)
                print(f"saved {args.onnx} (ONNX opset {ONNX_OPSET}): largest difference of onnxruntime's logits from "
                      f"the model's on {len(args.check)} image(s): {diff:.2e}")  # fmt: skip
            if args.torchscript:
                diff = export_torchscript(load(path), args.torchscript, args.check)
                print(f"saved {args.torchscript}: largest difference from the model on {len(args.check)} image(s): "
                      f"{diff:.2e}")  # fmt: skip
            if args.space:
                from .space import export_space

                print(f"saved {export_space(args.run_dir, args.space)}: a Hugging Face Space (python app.py in it "
                      "serves it here)")  # fmt: skip
            if args.timm:
                from .hub import export_timm

                print(f"saved {export_timm(args.run_dir, args.timm)} (timm: create_model('local-dir:{args.timm}', "
                      "pretrained=True))")  # fmt: skip
        elif args.command == "push":
            check_run_folder(args.run_dir)
            from .hub import push

            push(args.run_dir, args.repo_id, private=args.private)
            print(f"uploaded {args.run_dir} to https://huggingface.co/{args.repo_id}")
        elif args.command == "app":
            from .app import serve

            serve(args.source, port=args.port, onnx=args.onnx, threads=args.threads, host=args.host)
        elif args.command == "predict":
            check_number("k", args.k)
            if not Path(args.model).expanduser().is_file():
                raise MissingFile(f"no model file at {args.model}: create one with `resnets export RUN_DIR`")
            from .deploy import predict_files

            predict_files(args.model, args.images, k=args.k, csv=args.csv, threads=args.threads)
        elif args.command == "compare":
            from .results import compare

            print(compare(args.runs))
        elif args.command == "interpret":
            check_number("k", args.k)
            check_run_folder(args.run_dir)
            from .evaluate import CONFUSION_LIMIT
            from .training import interpret_run

            per_class = interpret_run(args.run_dir, k=args.k, data=args.data)
            worst = sorted(((printable(c), acc) for c, acc in per_class.items()), key=lambda ca: ca[1])
            if len(worst) > CONFUSION_LIMIT:  # many classes: the worst, and where the rest are
                print(f"the {CONFUSION_LIMIT} worst of {len(worst)} classes (every class: results.json's "
                      f"per_class_accuracy)")  # fmt: skip
                worst = worst[:CONFUSION_LIMIT]
            width = max(len(c) for c, _ in worst)
            for c, acc in worst:
                print(f"  {c:<{width}}  {acc:7.2%}")
            figure = "confusion_matrix.png" if len(per_class) <= CONFUSION_LIMIT else "most_confused.png"
            print(f"saved {args.run_dir}/{figure} and top_losses.png")
        elif args.command == "bench":
            from .bench import command

            command(args)
        elif args.command == "cache":
            _cache(args)
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
