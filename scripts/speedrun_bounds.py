"""What bounds a recipe's wall time on this machine: each part of a `resnets run` timed on its own, and the training's
floor, the recipe's network alone at each epoch's size.

    python scripts/speedrun_bounds.py OUT.json [--recipes speedrun-v2 speedrun10-v5] [--data PATH] [--timed DIR]

Parts (machine otherwise idle; the recipe's own settings: precision auto, channels-last, its batch size):
  imports   a fresh `python -c "import resnets.training, resnets.cli"`, the command's start (median of 3)
  data      get_data on the fast path into an empty cache: listing, checking every image, splitting, decoding
  decode    of which: building the image cache alone (the same files into another empty folder)
  loader    a training epoch's batches (no augmentation): gathered from the cache (CachedDL) and fastai's per item
  model     training steps of the network alone on synthetic batches, at each training size (images/s), and a
            validation forward pass at the scoring size
  floor     the epochs' training images at the model's speed, plus the scoring passes (two with flip TTA): what the
            recipe's training cannot go below without less compute or a faster step
Beside them, the recipe's timed commands on val/ (`scripts/speedrun.py` rows in DIR/speedrun.json, if any).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMPORT = "import time; t = time.perf_counter(); import resnets.training, resnets.cli; print(time.perf_counter() - t)"


def import_seconds() -> dict:
    walls, inner = [], []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
        inner.append(float(out.stdout.split()[-1]))
    return {"process_s": statistics.median(walls), "imports_s": statistics.median(inner)}


def model_rates(exp, bs: int, sizes: list[int], valid_size: int, steps: int = 6) -> dict:
    import torch
    import torch.nn.functional as F

    from resnets.models import create_model
    from resnets.optim import OPT_FUNCS
    from resnets.precision import choose_precision
    from resnets.timing import median_seconds

    bf16 = choose_precision(exp.precision, torch.device("cpu"))[0] == "bf16"
    model = create_model(exp.model, n_out=10, width=exp.width, stem=exp.stem).to(memory_format=torch.channels_last)
    opt = OPT_FUNCS["adam"](list(model.parameters()), lr=1e-3)
    rates = {}
    for size in sorted(set(sizes)):
        x = torch.randn(bs, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (bs,))

        def step(x=x, y=y):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

        rates[size] = bs / median_seconds(step, repeats=steps, warmup=2)
    x = torch.randn(bs, 3, valid_size, valid_size).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        forward = bs / median_seconds(lambda: model(x), repeats=steps, warmup=2)
    return {"precision": "bf16" if bf16 else "fp32", "train_images_per_s": rates, "forward_images_per_s": forward}


def data_seconds(exp, data) -> dict:
    from fastai.data.core import TfmdDL

    from resnets.data import get_data
    from resnets.decode import build_cache

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RESNETS_CACHE"] = f"{tmp}/a"
        start = time.perf_counter()
        dls = get_data(data or exp.data, presize=exp.presize, resize=exp.size, bs=exp.bs, fast_data=True)
        total = time.perf_counter() - start
        files = sorted({*dls.train.dataset.items, *dls.valid.dataset.items})
        start = time.perf_counter()
        build_cache(files, exp.presize, folder=f"{tmp}/b")
        decode = time.perf_counter() - start
        dl, idxs = dls.train, list(range(len(dls.train_ds)))
        list(dl.create_batches(idxs[: 4 * dl.bs]))  # labels read once, as a run's first epoch does
        ms = {}
        for way, make in (("gathered", dl.create_batches), ("per_item", lambda s: TfmdDL.create_batches(dl, s))):
            start = time.perf_counter()
            n = sum(1 for _ in make(idxs))
            ms[way] = 1000 * (time.perf_counter() - start) / n
        return {"get_data_s": total, "decode_s": decode, "n_train": len(dls.train_ds), "n_valid": len(dls.valid_ds),
                "bs": dl.bs, "loader_ms_per_batch": ms}


def timed(folder: Path, recipe: str) -> dict | None:
    path = folder / "speedrun.json"
    rows = [r for r in json.loads(path.read_text())["runs"] if r["label"] == recipe] if path.exists() else []
    if not rows:
        return None
    return {"seeds": [r["seed"] for r in rows], "wall_s": [r["wall_s"] for r in rows],
            "tta_accuracy": [r["tta_accuracy"] for r in rows], "machine": rows[0]["device"]}


def bounds(recipe: str, data, timed_dir: Path) -> dict:
    from resnets.recipes import get_experiment

    exp = get_experiment(recipe)
    sizes = [exp.train_size(e) for e in range(exp.epochs)]
    d = data_seconds(exp, data)
    m = model_rates(exp, d["bs"], sizes, exp.valid_size)
    train = sum(d["n_train"] / m["train_images_per_s"][s] for s in sizes)
    valid = (exp.epochs if exp.valid_last is None else exp.valid_last) + bool(exp.tta)
    score = valid * d["n_valid"] / m["forward_images_per_s"]
    loader = d["loader_ms_per_batch"]["gathered"] * exp.epochs * d["n_train"] / d["bs"] / 1000
    return {"recipe": recipe, "epochs": exp.epochs, "sizes": sizes, **d, **m, "floor_training_s": train,
            "floor_scoring_s": score, "loader_s": loader, "timed": timed(timed_dir, recipe)}


def table(report: dict) -> str:
    imp = report["imports"]
    lines = [f"{report['machine']}: a fresh process importing resnets {imp['process_s']:.1f} s "
             f"(the imports {imp['imports_s']:.1f} s)",
             "| recipe | data: list, check, decode (decode) | loader: gathered / per item, ms a batch | model floor: "
             "training + scoring | start + data + floor | timed on val/ (3 seeds) |",
             "|---|---|---|---|---|---|"]
    for r in report["recipes"]:
        start = imp["process_s"] + r["get_data_s"] + r["floor_training_s"] + r["floor_scoring_s"]
        t = r["timed"]
        seen = f"{statistics.mean(t['wall_s']):.0f} s ({', '.join(f'{w:.0f}' for w in t['wall_s'])})" if t else "-"
        lines.append(f"| {r['recipe']} | {r['get_data_s']:.1f} s ({r['decode_s']:.1f}) | "
                     f"{r['loader_ms_per_batch']['gathered']:.1f} / {r['loader_ms_per_batch']['per_item']:.1f} | "
                     f"{r['floor_training_s']:.0f} + {r['floor_scoring_s']:.1f} s | {start:.0f} s | "
                     f"{seen} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--recipes", nargs="+", default=["speedrun-v2", "speedrun10-v5"])
    p.add_argument("--data")
    p.add_argument("--timed", type=Path, default=ROOT / "results" / "speedrun-bf16")
    a = p.parse_args(argv)
    import torch

    from resnets.results import describe_device, versions

    report = {"machine": describe_device(torch.device("cpu")), "versions": versions(), "imports": import_seconds(),
              "recipes": [bounds(r, a.data, a.timed) for r in a.recipes]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    print(table(report))


if __name__ == "__main__":
    main()
