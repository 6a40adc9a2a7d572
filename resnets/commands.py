"""What each `resnets` command does, one function each (`cmd_run`, `cmd_export` ...), once resnets.cli has parsed
its command line; and the settings each command takes (COMMAND_OPTIONS).

Only the record (resnets.config) and the recipes are imported here at first: a command imports the modules that need
torch and fastai inside its function, after the settings and paths it was given have been checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import GROUPS, OPTION_GROUPS, Experiment, check_run_folder, check_source, csv_columns, is_weights_path
from .errors import InputError, MissingFile, check_number, printable
from .recipes import ALIASES, EXPERIMENTS, STUDIES, configure, get_study

__all__ = ["COMMAND_OPTIONS", "cmd_list", "cmd_run", "cmd_lr_find", "cmd_compare", "cmd_interpret", "cmd_study",
           "cmd_export", "cmd_app", "cmd_push", "cmd_predict", "cmd_bench", "cmd_cache"]

# torch and fastai take seconds to import: the record (resnets.config) and the recipes import neither, so every
# setting and the data's path are checked first, and only a command that trains or reads runs imports the heavy
# modules, inside its function; `--help` and a mistake answer at once.

# The settings each command takes, by the record's groups (resnets.config.GROUPS).
COMMAND_OPTIONS: dict[str, tuple[str, ...]] = {
    "run": tuple(k for g in GROUPS for k in OPTION_GROUPS[g]),
    # lr_find trains a few hundred batches of the model on the data: no schedule but the optimiser, no evaluation
    "lr-find": (*OPTION_GROUPS["model"], *OPTION_GROUPS["data"], "opt", "label_smoothing", "mixup",
                *OPTION_GROUPS["runtime"]),
    "study": tuple(k for g in GROUPS for k in OPTION_GROUPS[g] if k not in ("seed", "model")),  # every arm's
    "bench": ("data", "subset"),  # the real images for `data`, `epoch`, `profile` and `all`
}


def cmd_list(args) -> None:
    """`resnets list`: the experiments (a recipe under its plain name, the version it runs named; --all: the earlier
    versions too) and the studies."""
    everything = args.all
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
                          "written by `resnets export`")
    w = exp.pretrained
    if isinstance(w, str) and is_weights_path(w) and not Path(w).expanduser().exists():
        raise MissingFile(f"no weights at {w}: pass a .safetensors file, a timm hub folder, a timm tag "
                          "(resnet50d.ra2_in1k) or --pretrained alone for the model's default")
    return exp


def _check_split(exp: Experiment, given: dict) -> None:
    """What the data's own layout decides, said before torch loads: a CSV's label column that is not there (an
    error), and --valid-pct where the data has its own split (a line: it is not used)."""
    path = Path(str(exp.data)).expanduser()
    if path.suffix.lower() == ".csv" and path.is_file():
        cols = csv_columns(path)
        if exp.label_col is not None and exp.label_col not in cols:
            raise InputError(f"no column {exp.label_col!r} in {path}: its columns are {', '.join(cols)} (choose one "
                             "with --label-col)")
        own = "is_valid" in cols and f"{path} has an is_valid column, which splits it"
    else:
        own = path.is_dir() and (path / "train").is_dir() and f"{path} has its own train/ and validation folders"
    if own and "valid_pct" in given:
        print(f"resnets: --valid-pct {exp.valid_pct:g} is not used: {own} (--valid-pct splits a folder of class "
              "folders, or a CSV without is_valid)")


def _progress(flag: bool | None) -> bool:
    "Progress bars: as asked, else only when writing to a terminal."
    return sys.stdout.isatty() if flag is None else flag


def _given(args) -> dict:
    "The parsed command line's values, by name (the command and its function left out)."
    return {k: v for k, v in vars(args).items() if k not in ("command", "func")}


def cmd_run(args) -> None:
    "`resnets run NAME`: train an experiment into its folder, then its summary against the book."
    kw = _given(args)
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


def cmd_lr_find(args) -> None:
    "`resnets lr-find NAME`: fastai's learning-rate finder, its plot saved."
    kw = _given(args)
    exp = _checked(kw.pop("name"), kw, COMMAND_OPTIONS["lr-find"])
    from .training import lr_find

    s = lr_find(exp, out=kw["out"], progress=_progress(kw["progress"]))
    print(f"suggested learning rate: {s.valley:.2e} (valley); plot saved to {args.out}/lr_find.png")


def cmd_study(args) -> None:
    "`resnets study NAME`: every arm's settings and data checked, then the study run and tabled."
    kw = _given(args)
    name, out, seeds, progress = kw.pop("name"), kw.pop("out"), kw.pop("seeds"), _progress(kw.pop("progress"))
    for arm in get_study(name).arms:  # every arm's settings, and the data, checked before anything trains
        exp = configure(arm.experiment, verbose=False, **{**arm.options, **kw})
        check_source(exp.data)
    from .studies import run_study

    found = run_study(name, out or f"runs/study-{name}", seeds=seeds, progress=progress, **kw)
    print(found.table())
    print(f"saved {found.folder}/study.json and study.png")


def cmd_export(args) -> None:
    "`resnets export RUN_DIR`: the model file, and the formats asked for."
    check_run_folder(args.run_dir)  # before torch loads, as every other path the command line is given
    from .deploy import ONNX_OPSET, export, export_onnx, export_torchscript, load

    path = export(args.run_dir, args.out)
    print(f"saved {path}")
    if args.onnx:
        diff = export_onnx(load(path), args.onnx, args.check)
        print(f"saved {args.onnx} (ONNX opset {ONNX_OPSET}): largest difference of onnxruntime's logits from "
              f"the model's on {len(args.check)} image(s): {diff:.2e}")
    if args.torchscript:
        diff = export_torchscript(load(path), args.torchscript, args.check)
        print(f"saved {args.torchscript}: largest difference from the model on {len(args.check)} image(s): "
              f"{diff:.2e}")
    if args.space:
        from .space import export_space

        print(f"saved {export_space(args.run_dir, args.space)}: a Hugging Face Space (python app.py in it "
              "serves it here)")
    if args.timm:
        from .hub import export_timm

        print(f"saved {export_timm(args.run_dir, args.timm)} (timm: create_model('local-dir:{args.timm}', "
              "pretrained=True))")


def cmd_push(args) -> None:
    "`resnets push RUN_DIR USER/NAME`: the run uploaded to the Hugging Face Hub."
    check_run_folder(args.run_dir)
    from .hub import push

    push(args.run_dir, args.repo_id, private=args.private)
    print(f"uploaded {args.run_dir} to https://huggingface.co/{args.repo_id}")


def cmd_app(args) -> None:
    "`resnets app RUN_DIR|MODEL_FILE`: the web page."
    from .app import serve

    serve(args.source, port=args.port, onnx=args.onnx, threads=args.threads, host=args.host)


def cmd_predict(args) -> None:
    "`resnets predict MODEL IMAGE...`: each image's top classes."
    check_number("k", args.k)
    if not Path(args.model).expanduser().is_file():
        raise MissingFile(f"no model file at {args.model}: create one with `resnets export RUN_DIR`")
    from .deploy import predict_files

    predict_files(args.model, args.images, k=args.k, csv=args.csv, threads=args.threads)


def cmd_compare(args) -> None:
    "`resnets compare RUN...`: a table of runs against the book."
    from .results import compare

    print(compare(args.runs))


def cmd_interpret(args) -> None:
    "`resnets interpret RUN_DIR`: the plots redrawn, the per-class accuracy printed, the worst first."
    check_number("k", args.k)
    check_run_folder(args.run_dir)
    from .evaluate import CONFUSION_LIMIT
    from .training import interpret_run

    per_class = interpret_run(args.run_dir, k=args.k, data=args.data)
    worst = sorted(((printable(c), acc) for c, acc in per_class.items()), key=lambda ca: ca[1])
    if len(worst) > CONFUSION_LIMIT:  # many classes: the worst, and where the rest are
        print(f"the {CONFUSION_LIMIT} worst of {len(worst)} classes (every class: results.json's "
              f"per_class_accuracy)")
        worst = worst[:CONFUSION_LIMIT]
    width = max(len(c) for c, _ in worst)
    for c, acc in worst:
        print(f"  {c:<{width}}  {acc:7.2%}")
    figure = "confusion_matrix.png" if len(per_class) <= CONFUSION_LIMIT else "most_confused.png"
    print(f"saved {args.run_dir}/{figure} and top_losses.png")


def cmd_bench(args) -> None:
    "`resnets bench WHAT`: a benchmark (resnets.bench draws its tables)."
    from .bench import command

    command(args)


def cmd_cache(args) -> None:
    "`resnets cache`: the image caches, least recently used first; --prune / --clear remove them."
    from .cache import cache_folder, describe, prune

    folder = cache_folder()
    if args.clear or args.prune:
        limit = 0.0 if args.clear else None if args.limit is None else args.limit * 1e9
        older = None if args.older_than is None else args.older_than * 86400
        removed = prune(folder, limit=limit, older_than=older)
        print(f"removed {len(removed)} cache(s), {sum(c['bytes'] for c in removed) / 1e9:.2f} GB, from {folder}")
    print(describe(folder))
