"""Execute the notebooks in nbs/ at their full settings, each into itself with its outputs, for committing.

    python scripts/notebooks.py                 # every notebook not yet executed from its current source
    python scripts/notebooks.py 03_resnet18     # only these (a name or a prefix: 03)
    python scripts/notebooks.py --force         # again, even those already done
    python scripts/notebooks.py --check         # do the notebooks' numbers match their runs' results.json?
    python scripts/notebooks.py --table         # the table of times and results docs/results.md shows
    python scripts/notebooks.py 04 --reuse resnet50=/work/runs/resnet50-224   # report a run trained elsewhere
    make notebooks                              # the first, in the background (log: results/notebooks/execute.log)

Each notebook runs with papermill in nbs/ (so its relative links hold), with one parameter injected: `out`, the
folder its runs go into, results/notebooks/<notebook>/ (the 08 notebook also gets a local weights file: no network
here). The executed notebook keeps that injected cell commented out, so that a reader's Run All takes the parameters
cell's settings (new runs under nbs/runs/, not RunExists on the committed ones), and papermill's record of its paths
relative to the checkout. Resumable notebook by notebook: results/notebooks/executed.json records, for each one
executed, a hash of its code (the injected cell left out), how long it took and on what; a notebook whose code has
not changed since is skipped. A notebook that fails or is killed is left as it was; its run folder is cleared when it
starts again. Two jobs at once halve each other's speed: the times recorded are only meaningful on a quiet machine.

`--reuse NAME=DIR`: a finished run trained outside the notebook (experiment 5 at the chapter's settings takes over
five hours here: `resnets run ... --out DIR` in the background, resumed across sessions) is copied into the notebook's
folder as its run NAME before it executes; a notebook that resumes its runs (`resume=True`) reports it without
training again. The copy leaves its checkpoint behind (.gitignore: results keep no weights).
"""

import argparse
import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, RESULTS = ROOT / "nbs", ROOT / "results" / "notebooks"
STATE = RESULTS / "executed.json"
LIMIT = 1 << 20  # the largest executed notebook we commit: 1 MiB


def source_hash(nb: dict) -> str:
    """What the notebook runs, not what it printed: its code cells' sources, the injected parameters left out (a
    change to the prose leaves the outputs as they are, so it does not ask for another execution)."""
    cells = [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"]
             if c["cell_type"] == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def _state() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def _random_weights(folder: Path) -> Path:
    "A timm resnet18d weights file with random values: the ImageNet path without network (the notebook says so)."
    import timm
    import torch
    from safetensors.torch import save_file

    path = folder / "resnet18d-random-weights.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        net = timm.create_model("resnet18d", pretrained=False)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


class TooLarge(Exception):
    pass


# What the executed notebook's injected cell says in place of papermill's "# Parameters".
INJECTED = """\
# The parameters scripts/notebooks.py executed this notebook with (the outputs are theirs; its runs are in
# results/notebooks/), commented out: running the notebook again takes the parameters cell's instead, so its runs go
# under runs/ beside it rather than stopping at the committed ones (RunExists).
"""


def for_readers(nb: dict, nb_path: Path) -> dict:
    """The executed notebook `nb` as it is committed: its injected parameters commented out (Run All must not write
    into the committed runs, nor read 08's random weights, which git ignores), and papermill's input and output
    paths those of the notebook in the checkout (it is executed into itself), not this machine's absolute ones."""
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []) and not source.startswith(INJECTED):
            lines = [line for line in source.splitlines() if line and line != "# Parameters"]  # papermill's header
            cell["source"] = INJECTED + "".join(f"# {line}\n" for line in lines)
    meta = nb["metadata"].get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in meta:
            meta[key] = f"{NBS.name}/{nb_path.name}"
    return nb


def parameters(nb: dict) -> set[str]:
    "The names the notebook's parameters cell assigns (what papermill may inject)."
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cells[0]["source"]) if cells else "")
    return {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}


def _commit() -> str | None:
    "The checkout's commit (with '+changes' when its tracked files differ from it): the code the outputs came from."
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "resnets"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty else "")


def _save_state(state: dict) -> None:
    from resnets.files import atomic_write

    atomic_write(STATE, (json.dumps(dict(sorted(state.items())), indent=1) + "\n").encode())


def _reuse(folder: Path, runs: dict[str, Path]) -> None:
    "Copy each finished run (`--reuse NAME=DIR`) into the notebook's run folder as NAME."
    from resnets.results import load_results

    for name, src in runs.items():
        if not (Path(src) / "results.json").is_file() or not load_results(src).finished:
            raise ValueError(f"--reuse {name}={src}: not a finished run (no results.json, or not finished)")
        shutil.copytree(src, folder / name)


def execute(nb_path: Path, reuse: dict[str, Path] | None = None) -> dict:
    import nbformat
    import papermill
    from fastai.torch_core import default_device

    from resnets.results import describe_device, versions

    nb = json.loads(nb_path.read_text())
    takes, code = parameters(nb), "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    if "out" not in takes and re.search(r"\brun(_study)?\(", code):
        raise ValueError(f"{nb_path.name} trains but takes no `out` parameter: its runs would not be kept")
    state = _state()
    if state.pop(nb_path.stem, None) is not None:  # its committed runs go next: it is not done until it runs again
        _save_state(state)
    folder = RESULTS / nb_path.stem
    shutil.rmtree(folder, ignore_errors=True)  # a killed execution's runs: it starts again from the start
    folder.mkdir(parents=True)
    _reuse(folder, reuse or {})
    params = {"out": str(Path("..") / folder.relative_to(ROOT))} if "out" in takes else {}
    if nb_path.stem.startswith("08"):
        params["pretrained"] = str(Path("..") / _random_weights(folder).relative_to(ROOT))
    tmp = RESULTS / f".{nb_path.stem}.executing.ipynb"  # beside the runs, not in nbs/ (kept there when too large)
    start = time.perf_counter()
    try:
        executed = papermill.execute_notebook(str(nb_path), str(tmp), parameters=params, cwd=str(NBS),
                                              kernel_name="python3", progress_bar=False, log_output=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    nbformat.write(for_readers(executed, nb_path), str(tmp))
    size = tmp.stat().st_size
    if size > LIMIT:  # left unexecuted (and not recorded)
        raise TooLarge(f"{nb_path.name} executed into {size / 2**20:.1f} MiB (over 1 MiB): make its figures smaller"
                       f" ({tmp} kept to look at)")
    tmp.replace(nb_path)
    return {"source": source_hash(json.loads(nb_path.read_text())), "seconds": round(seconds, 1),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": describe_device(default_device()), "commit": _commit(), "versions": versions(),
            "bytes": size, **({"reused": sorted(reuse)} if reuse else {})}


# ------------------------------------------------------------------------------------------------- the check
NUMBER = re.compile(r"accuracy (\d\.\d{4}) after (\d+) epoch")


def outputs_text(nb: dict) -> str:
    "Everything the notebook printed or displayed as text."
    parts = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            parts.append("".join(o.get("text", "")))
            parts.append("".join(o.get("data", {}).get("text/plain", "")))
            parts.append("".join(o.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def _shows(text: str, number: str) -> bool:
    "Whether `text` shows `number` as a number of its own (0.6535, not the start of fastai's 0.653503)."
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", text) is not None


def _final_accuracy(run: Path) -> float | None:
    from resnets.results import load_results

    return load_results(run).accuracy if (run / "results.json").exists() else None


def _runs(folder: Path) -> tuple[list[Path], list[Path]]:
    "A notebook's study folders, and its runs outside them."
    studies = sorted(p.parent for p in folder.rglob("study.json"))
    runs = [p.parent for p in sorted(folder.rglob("results.json")) if not any(s in p.parents for s in studies)]
    return studies, runs


def check(nb_path: Path) -> list[str]:
    """What is wrong with an executed notebook against its runs: no outputs, an error, too large, its code changed
    since, a final accuracy it shows that is not its run's (or a run whose accuracy it does not show), or a number
    (0.dddd) in its prose that none of its outputs shows."""
    nb, problems = json.loads(nb_path.read_text()), []
    name, folder = nb_path.name, RESULTS / nb_path.stem
    done = _state().get(nb_path.stem)
    if done is None or not any(c.get("outputs") for c in nb["cells"]):
        return [f"{name}: not executed (python scripts/notebooks.py {nb_path.stem})"]
    if done["source"] != source_hash(nb):
        problems.append(f"{name}: its code changed after it was executed: run it again")
    if nb_path.stat().st_size > LIMIT:
        problems.append(f"{name}: {nb_path.stat().st_size / 2**20:.1f} MiB, over 1 MiB")
    if any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", [])):
        problems.append(f"{name}: a cell's output is an error")
    text = outputs_text(nb)
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for number in sorted(n for n in set(re.findall(r"\b0\.\d{4}\b", prose)) if not _shows(text, n)):
        problems.append(f"{name}: its text says {number}, which none of its outputs shows")
    shown = {float(a) for a, _ in NUMBER.findall(text)}
    studies, runs = _runs(folder)
    for path in studies:  # a study's table shows each arm's mean over its seeds
        study = json.loads((path / "study.json").read_text())
        for row in study["rows"]:
            finals = [_final_accuracy(path / Path(f).name) for f in study["runs"][row["arm"]]]
            if not finals or None in finals or abs(sum(finals) / len(finals) - row["accuracy"]) > 1e-9:
                problems.append(f"{name}: {path.name}'s row {row['arm']!r} is not the mean of its runs")
            if not _shows(text, f"{row['accuracy']:.4f}"):
                problems.append(f"{name}: {path.name}'s {row['arm']!r} accuracy is not in its outputs")
    recorded = {run.relative_to(folder): _final_accuracy(run) for run in runs}
    for run, acc in recorded.items():
        if acc is None or not _shows(text, f"{acc:.4f}"):
            problems.append(f"{name}: the final accuracy of {run} ({acc}) is not in its outputs")
    for acc in shown - {round(a, 4) for a in recorded.values() if a is not None}:
        problems.append(f"{name}: shows accuracy {acc:.4f}, which no results.json under {folder} has")
    return problems


def _minutes(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def _trained_outside(run: Path, done: dict) -> str:
    "For a run handed to the notebook (`--reuse`): that it was trained outside it, and its own time in all."
    from resnets.results import load_results

    if run.name not in done.get("reused", ()):
        return ""
    took = _minutes(load_results(run).wall_time)
    return f" (trained outside the notebook and reported by it; its record: {took} in all)"


def table() -> str:
    """The Markdown table docs/results.md shows (and a test compares): each executed notebook's time and what it
    trained, read from executed.json and its runs' results.json."""
    lines = ["| notebook | time | trained (final accuracy; a study: its runs) | ran on |", "|---|---|---|---|"]
    state = _state()
    for nb_path in sorted(NBS.glob("[0-9]*.ipynb")):
        done, folder = state.get(nb_path.stem), RESULTS / nb_path.stem
        if done is None:
            continue
        studies, runs = _runs(folder)
        finals = {r: _final_accuracy(r) for r in runs}
        what = [f"{r.relative_to(folder)} {acc:.4f}{_trained_outside(r, done)}" for r, acc in finals.items()
                if acc is not None]
        what += [f"{s.name} ({len(list(s.glob('*/results.json')))} runs)" for s in studies]
        lines.append(f"| [{nb_path.stem}](../nbs/{nb_path.name}) | {_minutes(done['seconds'])} | "
                     f"{', '.join(what) or '(no training)'} | {done['device']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks (names or prefixes, e.g. 03); default: all")
    ap.add_argument("--force", action="store_true", help="execute even those already done from the same source")
    ap.add_argument("--check", action="store_true", help="only check the executed notebooks against their runs")
    ap.add_argument("--table", action="store_true", help="print the table of the executed notebooks for the docs")
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=DIR",
                    help="a finished run copied into the notebook's folder as NAME, to be reported, not trained")
    args = ap.parse_args(argv)
    reuse = dict(r.split("=", 1) for r in args.reuse)
    if args.table:
        print(table())
        return 0
    notebooks = sorted(NBS.glob("[0-9]*.ipynb"))
    if args.names:
        notebooks = [p for p in notebooks if any(p.stem.startswith(n) for n in args.names)]
        if not notebooks:
            ap.error(f"no notebook in {NBS} is named or starts with {', '.join(args.names)}")
    if args.check:
        problems = [p for nb in notebooks for p in check(nb)]
        print("\n".join(problems) or f"{len(notebooks)} notebook(s) agree with their runs")
        return 1 if problems else 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = False
    for nb_path in notebooks:
        state = _state()
        done = state.get(nb_path.stem)
        if not args.force and done and done["source"] == source_hash(json.loads(nb_path.read_text())):
            print(f"{nb_path.name}: done already ({done['seconds']:.0f} s, {done['finished']})", flush=True)
            continue
        print(f"{nb_path.name}: executing ({datetime.now():%H:%M:%S})", flush=True)
        try:
            done = execute(nb_path, reuse=reuse)
        except Exception as e:  # a failing cell (papermill says which) or too large: the next notebooks still run
            print(f"{nb_path.name}: FAILED: {e}", flush=True)
            failed = True
            continue
        state = {**_state(), nb_path.stem: done}
        _save_state(state)
        print(f"{nb_path.name}: {state[nb_path.stem]['seconds']:.0f} s", flush=True)
        for problem in check(nb_path):
            print("  " + problem, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
