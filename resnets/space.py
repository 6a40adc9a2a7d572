"""`resnets export RUN_DIR --space DIR`: a folder that is a working Hugging Face Space for a trained run.

The folder holds what the Space runs and nothing else it needs to fetch: `app.py` (the `resnets app` page for the
model beside it), `model.resnets`, the run's plots and results.json (the page's card), a copy of this package
(`resnets/`, so that the page's predictions are this version's), `requirements.txt` pinned to the versions this was
built and tested with, and a README.md with the Space's front matter and the run's model card. `python app.py` in
the folder serves it locally, as the Space does.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .deploy import export
from .files import atomic_write
from .results import load_results

__all__ = ["REQUIREMENTS", "export_space", "space_card"]

# What the page imports, pinned to the installed versions (a local build's "+cu130" dropped: PyPI has the release).
REQUIREMENTS = ("torch", "torchvision", "fastai", "fastcore", "gradio", "safetensors", "numpy", "pillow", "matplotlib")
PLOTS = ("results.json", "results.png", "confusion_matrix.png", "most_confused.png")

APP = '''"""The resnets web page for the model beside this file, a Hugging Face Space (`python app.py` serves it here).
Written by `resnets export RUN_DIR --space DIR`."""
import os
from pathlib import Path

import resnets
from resnets.app import serve

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    print(f"resnets {resnets.__version__} from {Path(resnets.__file__).parent}", flush=True)
    serve(HERE / "model.resnets", port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
          host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
'''


def _pins() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def space_card(run_dir: Path) -> str:
    "The Space's model card: what trained the model, on what, how well, with what."
    r = load_results(run_dir)
    s = r.settings
    cmd = " ".join(s.get("argv") or []) or f"resnets run {r.experiment}"
    acc = f"{r.accuracy:.2%}" + (f" ({r.tta_accuracy:.2%} with flip TTA)" if r.tta_accuracy else "")
    versions = ", ".join(f"{k} {v}" for k, v in (r.versions or {}).items())
    return "\n".join([
        f"# {r.experiment}: {s.get('model')} at {s.get('size')} px", "",
        "A web page for a ResNet trained with resnets (the ResNets chapter of the fastai book, runnable): "
        "drop photos, see each one's five most likely classes.", "",
        f"- trained with `{cmd}` for {len(r.history)} epochs on {s.get('source') or s.get('data')} "
        f"({s.get('n_train', '?')} training images, {s.get('n_valid', '?')} validation images, seed {r.seed})",
        f"- validation accuracy {acc}", f"- trained on {r.device}; {versions}", "",
        "`python app.py` serves the page locally (`pip install -r requirements.txt` first).", ""])


def export_space(run_dir: str | os.PathLike, folder: str | os.PathLike) -> Path:
    "Write the Space for `run_dir` into `folder` (made if missing; files of an earlier export are replaced)."
    run_dir, folder = Path(run_dir), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export(run_dir, folder / "model.resnets")
    for name in PLOTS:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)
    package = Path(__file__).resolve().parent
    shutil.rmtree(folder / "resnets", ignore_errors=True)
    shutil.copytree(package, folder / "resnets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    atomic_write(folder / "app.py", APP.encode())
    atomic_write(folder / "requirements.txt", ("\n".join(_pins()) + "\n").encode())
    title = f"resnets {run_dir.name}"[:60]
    front = ["---", f"title: {title}", "emoji: 🔍", "colorFrom: yellow", "colorTo: red", "sdk: gradio",
             f"sdk_version: {version('gradio')}", "app_file: app.py", "pinned: false", "---", ""]
    atomic_write(folder / "README.md", ("\n".join(front) + space_card(run_dir)).encode())
    return folder
