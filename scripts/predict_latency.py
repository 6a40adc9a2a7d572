"""Per-image prediction time on this CPU: the eager model, TorchScript and onnxruntime, on the same images.

    python scripts/predict_latency.py RUN_DIR IMAGE_FOLDER [--n 50] [--out latency.json]

Exports RUN_DIR (a `resnets run --out` folder) to a model file, TorchScript and ONNX in a temporary folder, checks
that all three give the same logits on the images, then times the network alone (one preprocessed image at a
time, batch 1, after warm-up; in blocks, taking turns for 3 rounds; median) and the whole `predict` (read,
preprocess, network, top-5) for each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnets.deploy import ONNX_OPSET, export, export_onnx, export_torchscript, load  # noqa: E402
from resnets.results import describe_device, versions  # noqa: E402
from resnets.timing import median_seconds  # noqa: E402


def _median_ms(fns: dict, items, rounds: int = 3, warmup: int = 5) -> dict:
    """Median milliseconds of each function over the items: in blocks (one backend's threads alone on the cores,
    as a user runs one; each block the median of one call per item), the backends taking turns block by block for
    `rounds` rounds (drift hits them all); the median of the blocks."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            each = itertools.cycle(items)
            times[k].append(median_seconds(lambda: fn(next(each)), repeats=len(items), warmup=warmup))  # noqa: B023
    return {k: 1000 * statistics.median(t) for k, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("images", type=Path)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    files = sorted(f for f in a.images.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[: a.n]
    with tempfile.TemporaryDirectory() as tmp:
        eager = load(export(a.run_dir, Path(tmp) / "m.resnets"))
        ts_diff = export_torchscript(eager, Path(tmp) / "m.pt", files[:10])
        onnx_diff = export_onnx(eager, Path(tmp) / "m.onnx", files[:10])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(Path(tmp) / "m.pt")).eval()
        onnx = load(Path(tmp) / "m.onnx")
        xs = [eager.preprocess(f) for f in files]
        with torch.no_grad():
            network = _median_ms({"eager": eager.logits, "torchscript": scripted, "onnxruntime": onnx.logits}, xs)
        ts_predictor = type(eager)(scripted, eager.meta)  # the TorchScript module behind the same predict()
        whole = _median_ms({"eager": eager.predict, "torchscript": ts_predictor.predict, "onnxruntime": onnx.predict},
                           files)
    report = {"run": str(a.run_dir), "model": eager.meta["model"], "width": eager.meta.get("width", 1.0),
              "image_size": eager.meta["resize"], "images": len(files), "threads": torch.get_num_threads(),
              "onnx_opset": ONNX_OPSET, "max_logit_diff": {"torchscript": ts_diff, "onnxruntime": onnx_diff},
              "network_ms_per_image": network, "predict_ms_per_image": whole, "device": describe_device("cpu"),
              "versions": versions()}
    import onnxruntime

    report["versions"]["onnxruntime"] = onnxruntime.__version__
    print(json.dumps(report, indent=1))
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
